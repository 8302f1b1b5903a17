"""Result tables and plots from finished experiments."""
