#!/usr/bin/env bash
# cairn's main job on a local-disk repository: back up a sample directory,
# back it up again (nothing re-read), restore it, and verify the restore
# byte for byte. Everything lives in ./cairn-demo (delete it when done).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cairn-cli
CAIRN=${CARGO_TARGET_DIR:-$PWD/target}/release/cairn
DEMO=$PWD/cairn-demo
rm -rf "$DEMO" && mkdir -p "$DEMO/sample/docs" "$DEMO/sample/bin"
# Sample data: this project's sources, a 64 MiB incompressible file, a sparse
# file, a symlink.
cp -r crates format-spec README.md "$DEMO/sample/docs/"
head -c $((64 << 20)) /dev/urandom >"$DEMO/sample/bin/random.bin"
truncate -s 1G "$DEMO/sample/bin/sparse.img"
echo "sparse payload" | dd of="$DEMO/sample/bin/sparse.img" bs=1 seek=$((300 << 20)) conv=notrunc status=none
ln -s docs/README.md "$DEMO/sample/readme-link"

export CAIRN_REPOSITORY=$DEMO/repo
# Demo only: the password sits next to the repository. Use a secret store or
# CAIRN_PASSWORD_COMMAND for real repositories.
printf 'demo password, change me\n' >"$DEMO/password"
export CAIRN_PASSWORD_FILE=$DEMO/password

echo "== cairn init"
"$CAIRN" init
echo "== cairn backup (first)"
"$CAIRN" backup "$DEMO/sample" --service demo --tag quickstart
echo "== cairn backup (again, unchanged: no file content is read)"
"$CAIRN" backup "$DEMO/sample" --service demo --tag quickstart
echo "== cairn snapshots"
"$CAIRN" snapshots
echo "== cairn restore latest"
"$CAIRN" restore latest --service demo --target "$DEMO/restore"
echo "== verify"
diff -r --no-dereference "$DEMO/sample" "$DEMO/restore$DEMO/sample"
echo "restored tree is byte-identical to the source"
du -h --apparent-size "$DEMO/restore$DEMO/sample/bin/sparse.img" | sed 's/^/apparent size: /'
du -h "$DEMO/restore$DEMO/sample/bin/sparse.img" | sed 's/^/allocated:     /'
"$CAIRN" stats
