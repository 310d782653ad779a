"""Slim the image's virtual environment, then prove that what `serve` and `train` load still works.

Run by images/Dockerfile and images/Dockerfile.gpu in the ``deps`` stage, after ``pip install --no-compile``,
with the venv's python:

    python slim_venv.py prune SITE_PACKAGES      # drop what `selfmaker serve|train` never loads
    python slim_venv.py check                    # import + exercise it; fails the build when pruning broke it

``check`` also leaves ``.pyc`` files behind for exactly the modules it imported (the venv is installed
without them): start-up keeps its bytecode cache, the modules nothing imports carry none. Every step
here says why it is safe; docs/images.md lists what is absent from the image.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

#: scipy subpackages the image keeps: xgboost's core does ``import scipy.sparse`` (which loads
#: scipy._lib and scipy.special), training/data.py builds libsvm data as scipy.sparse CSR, and the
#: toolkit's NPZ decoder uses scipy.sparse.load_npz. Measured: nothing else of scipy is imported by
#: `serve` or `train` (built-ins and their data formats).
SCIPY_KEEP = {"_lib", "sparse", "special"}
#: ... and inside scipy.sparse, the sparse solvers and graph routines are never imported either
SCIPY_SPARSE_DROP = ("linalg", "csgraph")

#: pyarrow: CSV and Parquet reading (pyarrow.csv, pyarrow.parquet, which uses pyarrow.dataset) stay.
#: Dropped: Arrow Flight RPC, the S3/GCS/Azure/HDFS filesystems, ORC, Feather, Substrait's Python
#: binding, the C++ test module, headers and Cython sources. pyarrow imports every one of the
#: optional modules inside ``try: ... except ImportError`` (pyarrow/fs.py, pyarrow/dataset.py).
#: libarrow_substrait.so itself stays: pyarrow.lib links it.
PYARROW_DROP = (
    "libarrow_flight.so*",
    "libarrow_python_flight.so*",
    "_flight.*.so",
    "flight.py",
    "libarrow_s3.so*",
    "_s3fs.*.so",
    "_gcsfs.*.so",
    "_azurefs.*.so",
    "_hdfs.*.so",
    "_orc.*.so",
    "_dataset_orc.*.so",
    "orc.py",
    "_feather.*.so",
    "feather.py",
    "_substrait.*.so",
    "substrait.py",
    "_pyarrow_cpp_tests.*.so",
    "include",
    "src",
    "tests",
)

#: test suites of the big packages (nothing imports them at run time)
TEST_DIRS_OF = ("scipy", "numpy", "onnx", "xgboost", "pyarrow")
#: headers, stubs and sources: needed to build against a package, not to run it
SOURCE_SUFFIXES = (".pyi", ".pxd", ".pyx", ".pxi", ".h", ".hpp", ".c", ".cpp")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _stub(package: Path, dotted: str, version: str) -> None:
    """Replace a pruned subpackage by one that says why it is missing (not a bare "No module named")."""
    _remove(package)
    package.mkdir()
    (package / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\n"
        f"    {dotted!r} ' is not in the selfmaker image: it keeps only scipy.sparse and scipy.special '\n"
        f"    '(what xgboost and selfmaker load). For the full scipy, build an image FROM selfmaker with '\n"
        f"    '`pip install --force-reinstall --no-deps scipy=={version}` (docs/images.md).', "
        f"name={dotted!r})\n"
    )


def _dedupe_shared_libraries(site: Path) -> int:
    """Byte-identical shared libraries in one directory (pyarrow ships libarrow_python.so, .so.2600 and
    .so.2600.1.0 as three copies) become relative symlinks to the fully versioned file; the dynamic loader
    follows them. Copies in different packages (numpy.libs and scipy.libs share libgfortran) stay copies:
    a link across packages would break one when the other is upgraded or removed."""
    groups: dict[tuple[Path, int, str], list[Path]] = {}
    for path in sorted(site.rglob("*.so*")):
        if path.is_symlink() or not path.is_file():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        groups.setdefault((path.parent, path.stat().st_size, digest), []).append(path)
    saved = 0
    for (_, size, _), paths in groups.items():
        keep = max(paths, key=lambda p: (len(p.name), p.name))  # libx.so.1.2.3 stays the real file
        for dupe in (p for p in paths if p != keep):
            dupe.unlink()
            dupe.symlink_to(keep.name)
            saved += size
    return saved


def prune(site: Path) -> None:
    """Drop what `selfmaker serve|train` never loads from the site-packages directory ``site``."""
    for name in TEST_DIRS_OF:
        for tests in [p for p in (site / name).rglob("*") if p.is_dir() and p.name in ("tests", "test")]:
            _remove(tests)
    # onnxruntime's offline tools (transformers optimizer, model conversion scripts)
    for sub in ("transformers", "tools"):
        _remove(site / "onnxruntime" / sub)
    for pattern in PYARROW_DROP:
        for path in (site / "pyarrow").glob(pattern):
            _remove(path)
    scipy = site / "scipy"
    version = next(site.glob("scipy-*.dist-info")).name.removeprefix("scipy-").removesuffix(".dist-info")
    for sub in sorted(p for p in scipy.iterdir() if p.is_dir() and not p.name.startswith("__")):
        if sub.name not in SCIPY_KEEP:
            _stub(sub, f"scipy.{sub.name}", version)
    for sub in SCIPY_SPARSE_DROP:
        _stub(scipy / "sparse" / sub, f"scipy.sparse.{sub}", version)
    for path in list(site.rglob("*")):
        if path.is_file() and path.suffix in SOURCE_SUFFIXES:
            path.unlink()
    # no bytecode yet: `check` writes it for the modules that are really imported
    for cache in [p for p in site.rglob("__pycache__") if p.is_dir()]:
        shutil.rmtree(cache)
    saved = _dedupe_shared_libraries(site)
    print(f"slim_venv: pruned {site} (duplicate libraries symlinked: {saved / 1e6:.1f} MB)")


#: modules `serve` and `train` import that the exercise below does not reach by itself (measured: the
#: modules of a real train + serve run, see docs/images.md); importing them also caches their bytecode
IMPORTED_AT_RUN_TIME = (
    "boto3.s3.transfer",
    "botocore.config",
    "botocore.exceptions",
    "gunicorn.app.base",
    "gunicorn.glogging",
    "gunicorn.http.wsgi",
    "gunicorn.workers.gthread",
    "gunicorn.workers.sync",
    "prometheus_client.core",
    "pydantic",
    "pydantic_settings",
    "werkzeug.exceptions",
    "pyarrow.dataset",
    "pyarrow.fs",
    "xgboost.collective",
    "xgboost.tracker",
    # application/x-recordio-protobuf (common/recordio.py builds the SDK's Record message at import)
    "google.protobuf.descriptor_pb2",
    "google.protobuf.descriptor_pool",
    "google.protobuf.message_factory",
    # the `lambda` mode: the runtime interface client and its native HTTP client
    "awslambdaric.__main__",
    "awslambdaric.bootstrap",
    "awslambdaric.lambda_runtime_client",
    "runtime_client",
)


def _expect(ok: object, what: str) -> None:
    if not ok:
        raise SystemExit(f"slim_venv: check failed: {what}")


def check() -> None:
    """Import and exercise everything `serve` and `train` use; exit non-zero on the first failure."""
    import importlib
    import io
    import json

    import boto3
    import flask
    import numpy as np
    import onnx
    import onnxruntime as ort
    import orjson
    import prometheus_client
    import psutil
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    import scipy.sparse as sp
    import scipy.special
    import xgboost as xgb
    from onnx import TensorProto, helper
    from sagemaker_inference import errors as toolkit_errors  # for user scripts (requirements-common.txt)

    for name in IMPORTED_AT_RUN_TIME:
        importlib.import_module(name)

    # serving: S3 model download / async inference clients, codecs, the flask app, metrics
    boto3.session.Session(region_name="us-east-1").client("s3")  # loads botocore's S3 model; no network
    _expect(orjson.loads(orjson.dumps({"a": 1})) == {"a": 1} and psutil.cpu_count(), "orjson, psutil")
    _expect(flask.Flask("check").test_client().get("/").status_code == 404, "flask")
    _expect(b"python_info" in prometheus_client.generate_latest(), "prometheus_client")

    # training data: CSV and Parquet through pyarrow, libsvm (and NPZ request bodies) through scipy.sparse
    table = pacsv.read_csv(
        pa.BufferReader(b"1,2.5\n0,3.5\n"), read_options=pacsv.ReadOptions(column_names=["y", "x"])
    )
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    _expect(
        pq.read_table(io.BytesIO(parquet.getvalue())).column("x").to_pylist() == [2.5, 3.5], "pyarrow parquet"
    )
    x = sp.vstack([sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32))] * 2).tocsr()
    npz = io.BytesIO()
    sp.save_npz(npz, x)
    _expect(sp.load_npz(io.BytesIO(npz.getvalue())).shape == (4, 2), "scipy.sparse NPZ decoding")
    _expect(toolkit_errors.GenericInferenceToolkitError(422, "x").status_code == 422, "sagemaker_inference")
    _expect(float(scipy.special.expit(0.0)) == 0.5, "scipy.special")
    # the Model Monitor analyzer (training/monitoring/): KLL sketches, the Kolmogorov-Smirnov critical value
    from datasketches import kll_doubles_sketch

    sketch = kll_doubles_sketch(200)
    sketch.update(1.0)
    _expect(sketch.n == 1 and float(scipy.special.kolmogi(0.01)) > 1.6, "datasketches, scipy.special.kolmogi")
    for pruned in ("scipy.optimize", "scipy.linalg", "scipy.sparse.linalg"):
        try:
            importlib.import_module(pruned)
            _expect(False, f"{pruned} should be pruned")
        except ModuleNotFoundError as exc:
            _expect("selfmaker image" in str(exc), f"{pruned} says why it is missing")

    # the built-in xgboost on sparse and dense data, and an ONNX model written with onnx's helpers
    for data in (x, x.toarray()):
        booster = xgb.train(
            {"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(data, label=[0, 1, 0, 1]), 2
        )
        _expect(
            booster.predict(xgb.DMatrix(data)).shape == (4,) and json.loads(booster.save_raw("json")),
            "xgboost",
        )
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        "check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _expect(session.run(None, {"x": np.zeros((1, 2), np.float32)})[0].tolist() == [[0.5, 0.5]], "onnxruntime")
    print("slim_venv: check passed (serving, training data, xgboost, onnxruntime)")


def main(argv: list[str]) -> int:
    if argv[:1] == ["prune"] and len(argv) == 2:
        prune(Path(argv[1]))
    elif argv == ["check"]:
        sys.dont_write_bytecode = False  # the cache of what is imported here is what the image keeps
        check()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
