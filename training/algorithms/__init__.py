"""Built-in algorithms (SageMaker's xgboost, linear-learner, kmeans, pca and factorization-machines
contracts) that export ONNX."""
