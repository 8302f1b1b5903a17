"""Views for training: speed and pitch perturbation and the sparse sinc resampler behind them."""
