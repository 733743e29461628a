#!/usr/bin/env bash
# Vendor the web page's 360° viewer: Photo Sphere Viewer (@photo-sphere-viewer/core) and the three.js
# it depends on, from npm, into src/panosync/server/static/photo-sphere-viewer/.
#
#   bash scripts/vendor-viewer.sh          # or: make viewer-assets
#
# Why the files are in the repository rather than loaded from a CDN or installed by npm at build
# time: the page must work offline (`panosync ui` on a machine without web access, and no request
# may leave the machine: tests/test_server_ui.py checks it), and `pip install panosync[ui]` must
# carry the viewer with it (pyproject.toml's package-data lists these files), with no Node.js step.
#
# What it does, the same every time:
#   1. `npm pack` the pinned versions below into a temporary folder; the tarballs' SHA-512 must equal
#      the pinned npm integrity strings (npm checks the registry's too), so a changed package stops it.
#   2. Copies only what a browser runs, with each package's LICENSE (both MIT):
#        core/index.module.js, core/index.css, core/LICENSE          from @photo-sphere-viewer/core
#        three/three.module.min.js, three/three.core.min.js,
#        three/LICENSE                                              from three (build/)
#      three.module.min.js imports ./three.core.min.js, and nothing else is imported.
#   3. Rewrites the one import specifier PSV's module uses, the bare "three" (written in 16 import
#      statements of index.module.js), to the relative "../three/three.module.min.js". A browser
#      resolves a bare specifier only through an import map, and Gradio 6.31 gives the page none that
#      holds: gr.HTML's `head` recreates <script> elements without their type (an importmap there
#      runs as JavaScript and fails, measured in Chromium 156), and launch(head=...) is added by
#      Gradio's own script after its modules have loaded, which only browsers that accept import maps
#      added late take (Chromium 156 did). The relative path works in any browser that runs ES
#      modules. No other byte of any file is changed.
#   4. Writes VENDORED.txt: the versions, integrity strings and each file's SHA-256.
#
# To update: set the versions (PSV's package.json names the three range it needs: `npm view
# @photo-sphere-viewer/core@VERSION dependencies`), set both integrity strings from
# `npm view PACKAGE@VERSION dist.integrity`, run this, then the browser tests:
#   .venv/bin/python -m pytest -q tests/test_viewer_browser.py tests/test_server_ui.py
set -euo pipefail
cd "$(dirname "$0")/.."

PSV_VERSION=5.15.1
PSV_INTEGRITY=sha512-nhJviczUB1xiAT/I7mGba9iDIw7DvsiK34hbR9t7kIrg9MySG33uA+a4QUk2dEOP5PjcKMj58wod8I/dQ7ePiw==
THREE_VERSION=0.185.1  # @photo-sphere-viewer/core 5.15.1 depends on three ^0.185.1
THREE_INTEGRITY=sha512-5aojFCXKwnjBRZvUnt3WFfEcvUJgkN5LlijRFN95hMy8WVkG4I0QNcJE+OuWvuJ0bOdStrbfXn0pkd6/QyiAlg==
DEST=src/panosync/server/static/photo-sphere-viewer

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. the tarballs, checked
(cd "$work" && npm pack --silent "@photo-sphere-viewer/core@$PSV_VERSION" "three@$THREE_VERSION" >/dev/null)
check() {  # check TARBALL INTEGRITY
    local actual
    actual="sha512-$(openssl dgst -sha512 -binary "$1" | base64 | tr -d '\n')"
    if [ "$actual" != "$2" ]; then
        echo "$(basename "$1"): integrity $actual, expected $2; not vendored" >&2
        exit 1
    fi
}
check "$work/photo-sphere-viewer-core-$PSV_VERSION.tgz" "$PSV_INTEGRITY"
check "$work/three-$THREE_VERSION.tgz" "$THREE_INTEGRITY"
mkdir "$work/core" "$work/three"
tar -xzf "$work/photo-sphere-viewer-core-$PSV_VERSION.tgz" -C "$work/core"
tar -xzf "$work/three-$THREE_VERSION.tgz" -C "$work/three"

# 2. the files a browser runs, and the licences
rm -rf "$DEST"
mkdir -p "$DEST/core" "$DEST/three"
cp "$work/core/package/index.module.js" "$work/core/package/index.css" "$work/core/package/LICENSE" "$DEST/core/"
cp "$work/three/package/build/three.module.min.js" "$work/three/package/build/three.core.min.js" \
   "$work/three/package/LICENSE" "$DEST/three/"

# 3. the bare specifier, made relative; then no bare specifier may be left in any module
sed -i 's#from "three";#from "../three/three.module.min.js";#' "$DEST/core/index.module.js"
# (static imports "} from '…'", side-effect imports "import '…'", dynamic imports "import(")
imports=$(cat "$DEST"/core/*.js "$DEST"/three/*.js \
          | grep -oE '(\}\s*from|(^|[;}[:space:]])import)\s*["'"'"'][^"'"'"']+["'"'"']' \
          | grep -oE '["'"'"'][^"'"'"']+["'"'"']$' | tr -d "\"'" | sort -u)
for specifier in $imports; do
    case "$specifier" in
        ../three/three.module.min.js | ./three.core.min.js) ;;
        *) echo "an import of $specifier is left; the page cannot load it" >&2; exit 1 ;;
    esac
done
if cat "$DEST"/core/*.js "$DEST"/three/*.js | grep -qE '(^|[^.[:alnum:]_$])import\s*\('; then
    echo "a dynamic import is left; check what it loads" >&2
    exit 1
fi

# 4. what is here, and from where
{
    echo "Vendored by scripts/vendor-viewer.sh from npm; do not edit (run the script to update)."
    echo "@photo-sphere-viewer/core $PSV_VERSION $PSV_INTEGRITY"
    echo "three $THREE_VERSION $THREE_INTEGRITY"
    echo "core/index.module.js: its 'three' import specifier made '../three/three.module.min.js'"
    echo
    (cd "$DEST" && sha256sum core/* three/*)
} > "$DEST/VENDORED.txt"
du -ab "$DEST" | sort -k2
