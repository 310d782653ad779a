"""What every part of selfmaker shares: URIs, the S3 client, safe archives, model data, processes, HTTP.

A leaf: it imports none of our packages, and every package (serving, training, batch, selfmaker, infra,
bench) may import it (tests/test_architecture.py checks both). Its errors are its own plain exceptions;
each package turns them into its own error base where it calls them.

- :mod:`common.uris`        ``s3://`` / ``file://`` URIs and plain paths
- :mod:`common.s3`          THE boto3 S3 client factory (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``)
- :mod:`common.archives`    safe tar extraction (no traversal, absolute paths, links out, devices)
- :mod:`common.modeldata`   model data (a directory, an archive, an S3 prefix) to a local model directory
- :mod:`common.proc`        ``free_port``, ``pip_command``, container-engine detection
- :mod:`common.http`        the keep-alive HTTP/1.1 clients to model servers (asyncio and threads)
- :mod:`common.recordio`    ``application/x-recordio-protobuf``: RecordIO framing, the SDK's ``Record``
"""
