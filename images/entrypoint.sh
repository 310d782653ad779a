#!/bin/sh
# Entry point of the selfmaker image; SageMaker starts it as `<image> train` or `<image> serve`.
#
#   train  -> `selfmaker train`: runs as the container's user (root by default), because SageMaker mounts
#             /opt/ml/{model,output,checkpoints} root-owned and the job must write there.
#   serve  -> `selfmaker serve` on 0.0.0.0:${SAGEMAKER_BIND_TO_PORT:-8080} with /opt/ml/model.  Serving only
#             reads the model, so when started as root it drops to the unprivileged `selfmaker` user --
#             unless the model directory is not readable by that user or SELFMAKER_SERVE_AS_ROOT=true.
#   lambda -> AWS Lambda (container image function): `python -m serving.lambda_handler` loads the model from
#             SELFMAKER_MODEL_DATA (s3://) into /tmp during the init phase and runs the Lambda runtime
#             interface client (awslambdaric). Lambda already runs the image as an unprivileged user with a
#             read-only file system apart from /tmp; nothing here needs root.
#   train-node, transform-share -> the same `selfmaker` commands: one node / one array child of an AWS Batch job.
#   other  -> executed as given (e.g. `bash`, `python -c ...`).
# Every branch ends in `exec`, so the server/trainer is PID 1 and receives SIGTERM directly.
set -eu

cmd="${1:-serve}"
[ "$#" -gt 0 ] && shift

case "$cmd" in
  train)
    exec selfmaker train "$@"
    ;;
  train-node|transform-share)
    # AWS Batch jobs (job definitions of the `selfmaker:jobs` stack): one node / one array child
    exec selfmaker "$cmd" "$@"
    ;;
  serve)
    model_dir="${SAGEMAKER_MODEL_DIR:-/opt/ml/model}"
    set -- --model-dir "$model_dir" --host 0.0.0.0 --port "${SAGEMAKER_BIND_TO_PORT:-8080}" "$@"
    if [ "$(id -u)" = "0" ] && [ "${SELFMAKER_SERVE_AS_ROOT:-false}" != "true" ]; then
      drop="setpriv --reuid=selfmaker --regid=selfmaker --init-groups --reset-env"
      # Everything under the model directory must be readable by the unprivileged user.
      unreadable="$($drop find "$model_dir" ! -readable -print -quit 2>&1 || echo "$model_dir")"
      if [ -z "$unreadable" ]; then
        exec setpriv --reuid=selfmaker --regid=selfmaker --init-groups env HOME=/home/selfmaker selfmaker serve "$@"
      fi
      echo "entrypoint: serving as root: $unreadable is not readable by user selfmaker" >&2
    fi
    exec selfmaker serve "$@"
    ;;
  lambda)
    exec python -m serving.lambda_handler "$@"
    ;;
  *)
    exec "$cmd" "$@"
    ;;
esac
