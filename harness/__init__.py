"""harness: fine-tuning under distribution shift (Optuna studies, MLflow tracking, shift reports)."""
