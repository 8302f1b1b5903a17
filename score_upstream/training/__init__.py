"""SCORE training: typed configs, the LibriSpeech data pipeline, student/target model and the trainer."""
