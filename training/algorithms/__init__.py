"""Built-in algorithms (SageMaker's linear-learner and xgboost contracts) that export ONNX."""
