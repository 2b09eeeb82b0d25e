#!/usr/bin/env bash
# Installs Debian's Apertium and the English->X pairs the kit uses, when missing and possible.
# Without it the Apertium translator raises a clear error and its tests are skipped with a reason.
set -u
pairs="apertium-eng-cat apertium-eng-spa apertium-eo-en apertium-hbs-eng"
need=0
command -v apertium >/dev/null 2>&1 || need=1
for m in eng-cat eng-spa en-eo eng-hbs_HR; do
  [ -f "/usr/share/apertium/modes/$m.mode" ] || need=1
done
[ "$need" = 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apertium: apt-get not available; install Apertium and: $pairs (the Apertium translator is disabled)" >&2; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "apertium: not root and no passwordless sudo; run: sudo apt-get install -y apertium $pairs" >&2; exit 0; fi
fi
echo "apertium: installing apertium $pairs from Debian"
$SUDO apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq apertium $pairs >/dev/null \
  || echo "apertium: apt-get install failed; the Apertium translator is disabled" >&2
exit 0
