#!/usr/bin/env bash
# videococa entry point.
#
#   ./run.sh              set up, then run the main job and print where its report is
#   ./run.sh --quick      the main job at smoke-test size (a few minutes)
#   ./run.sh study        the video-variant study of the shapes project
#   ./run.sh test         set up (with test extras), then run the whole test suite
#   ./run.sh test -m "not slow"   the fast tier
#   ./run.sh setup [--test]       only create/refresh .venv from requirements*.txt (idempotent)
#
# Extra arguments after `test` go to pytest; otherwise to videococa.projects.shapes.main.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

# Installs $1 (a requirements file) into .venv unless the same file is already installed.
install_requirements() {
  local file=$1 stamp="$VENV/.$(basename "$1").sha256" want
  want=$(sha256sum "$file" | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  echo "[setup] installing $file into .venv ..."
  "$PY" -m pip install --quiet --disable-pip-version-check -r "$file"
  echo "$want" > "$stamp"
}

# Java is needed by pycocoevalcap's PTB tokenizer and METEOR; without it METEOR is reported unavailable.
ensure_java() {
  command -v java >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    echo "[setup] installing a Java runtime (default-jre-headless) for METEOR ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless) \
      >/dev/null 2>&1 || echo "[setup] could not install Java; METEOR will be reported as unavailable"
  else
    echo "[setup] no Java found; METEOR will be reported as unavailable"
  fi
}

setup() {
  [[ -x "$PY" ]] || { echo "[setup] creating .venv"; python3 -m venv "$VENV"; }
  install_requirements requirements.txt
  ensure_java
}

case "${1:-}" in
  setup)
    setup
    if [[ "${2:-}" == "--test" ]]; then install_requirements requirements-test.txt; fi
    ;;
  test)
    shift
    setup
    install_requirements requirements-test.txt
    exec "$PY" -m pytest tests "$@"
    ;;
  *)
    setup
    exec "$PY" -m videococa.projects.shapes.main "$@"
    ;;
esac
