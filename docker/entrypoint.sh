#!/bin/sh
# Container entry point (the image's ENTRYPOINT, with CMD ["worker"]).
#
#   (no arguments) | worker [ARGS]   the RunPod serverless worker: python -u handler.py [ARGS]
#   -ARG...                           the worker with these arguments (--rp_serve_api, --test_input ...)
#   serve [ARGS]                      the HTTP server: higgs-tts serve --host 0.0.0.0 --port $PORT
#   wyoming [ARGS]                    the Wyoming server (Home Assistant): higgs-tts wyoming --uri $WYOMING_URI
#   anything else                     run as a command (python, higgs-tts voices, sh, ...)
#
# MODE=http turns the default (worker) into the HTTP server; PORT (default 8000) and HOST
# (default 0.0.0.0) set where it listens. MODE=wyoming turns it into the Wyoming server, on
# WYOMING_URI (default tcp://0.0.0.0:10200). `exec` leaves the server as PID 1, so SIGTERM reaches it
# (the RunPod SDK and uvicorn both shut down on it). APP_DIR (default /app) holds handler.py.
set -eu
cd "${APP_DIR:-/app}"

command="${1:-worker}"
if [ "$command" = worker ] && [ "${MODE:-worker}" = http ]; then
  command=serve
elif [ "$command" = worker ] && [ "${MODE:-worker}" = wyoming ]; then
  command=wyoming
fi

case "$command" in
  worker)
    [ $# -gt 0 ] && shift
    exec python -u handler.py "$@"
    ;;
  serve)
    [ $# -gt 0 ] && shift
    exec higgs-tts serve --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" "$@"
    ;;
  wyoming)
    [ $# -gt 0 ] && shift
    exec higgs-tts wyoming "$@"
    ;;
  -*)
    exec python -u handler.py "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
