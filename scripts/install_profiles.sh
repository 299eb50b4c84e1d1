#!/usr/bin/env bash
# Make `snakemake --profile <name>` work with a bare name: Snakemake looks for profiles in the
# working directory, ~/.config/snakemake and /etc/xdg/snakemake, never in ./profiles/. This links
# ~/.config/snakemake/<name> -> <this checkout>/profiles/<name> for every profile here.
# Re-run it after moving the checkout; an existing link is replaced, a real directory is kept.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake"
mkdir -p "$target"
for profile in "$repo"/profiles/*/; do
    name="$(basename "$profile")"
    link="$target/$name"
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        echo "skip $link: exists and is not a link (remove it to use $profile)" >&2
        continue
    fi
    ln -sfn "${profile%/}" "$link"
    echo "$link -> ${profile%/}"
done
