"""The built-in Model Monitor analyzer: what SageMaker's ``sagemaker-model-monitor-analyzer`` image does for
data-quality baselines and monitoring executions, run as ``python -m training.monitoring`` in a processing
job's ``/opt/ml`` tree.

:mod:`.statistics` computes ``statistics.json``, suggests ``constraints.json`` and checks a dataset against
them (``constraint_violations.json``) in SageMaker's documented schemas, on Apache DataSketches' KLL
sketches and numpy; :mod:`.analyzer` reads the job's environment (``dataset_format``, ``dataset_source``,
``output_path``, ``baseline_constraints`` …) and datasets (CSV files, or data-capture JSON Lines) and writes
the files. See docs/monitoring.md.
"""
