"""selfmaker: the SageMaker-compatible platform (`selfmaker up`). The layout and its layers are mapped in
docs/platform-internals.md."""
