#!/usr/bin/env bash
# Builds the harness that times SGLang's Rust radix tree (TokenTree) on bench/tree_ops.py's
# workload. SGLang's files are fetched at a fixed commit into src/radix_tree/ (not kept here):
#
#     bash bench/sglang_tree/build.sh
#     python bench/tree_ops.py --clock cpu --external sglang=bench/sglang_tree/target/release/sglbench
#
# Needs git, cargo and network access to GitHub and crates.io (offline: point cargo at a
# local registry, e.g. Debian's librust-*-dev packages under /usr/share/cargo/registry).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
commit=028b817d
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
git clone --quiet --filter=blob:none --no-checkout https://github.com/sgl-project/sglang "$dir/sglang"
git -C "$dir/sglang" checkout --quiet "$commit" -- sgl-model-gateway/src/radix_tree
mkdir -p "$here/src/radix_tree"
for f in mod.rs common.rs token_tree.rs; do
    cp "$dir/sglang/sgl-model-gateway/src/radix_tree/$f" "$here/src/radix_tree/$f"
done
sed -i '/string_tree/d' "$here/src/radix_tree/mod.rs"  # the character tree is not built here
cd "$here" && cargo build --release --quiet
echo "$here/target/release/sglbench"
