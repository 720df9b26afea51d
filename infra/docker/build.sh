#!/usr/bin/env bash
# Builds (and optionally pushes) the platform images with tags derived from the git SHA.
#
#   bash infra/docker/build.sh                        # cpu image + mlflow-server image
#   bash infra/docker/build.sh --variant cuda         # the CUDA image only
#   bash infra/docker/build.sh --variant all --push   # cpu, cuda and mlflow-server, pushed
#   IMAGE=registry.example.com/ml/tipsv2 bash infra/docker/build.sh --push
#
# Tags (SHA = `git rev-parse --short=12 HEAD`, plus "-dirty" when the work tree has
# uncommitted changes to tracked files):
#   $IMAGE:$SHA-cpu   $IMAGE:$SHA-cuda   $IMAGE-mlflow:$SHA
# --tag NAME adds $IMAGE:NAME-cpu, $IMAGE:NAME-cuda and $IMAGE-mlflow:NAME (e.g. --tag local
# for infra/k8s/overlays/local). With --push each image's digest is printed as
# IMAGE@sha256:…, ready for a pipeline's `image` parameter or a kustomize `images:` entry.
#
# Options: --variant cpu|cuda|all (default cpu), --no-mlflow, --tag NAME (repeatable),
# --platform P (default: the builder's), --push (else --load into the local engine).
# Environment: IMAGE (default tipsv2), DOCKER (default docker; needs buildx/BuildKit).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image="${IMAGE:-tipsv2}"
docker="${DOCKER:-docker}"
variant=cpu
mlflow=1
push=0
platform=""
extra_tags=()

usage() { sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) variant="${2:?--variant needs cpu, cuda or all}"; shift 2 ;;
    --tag) extra_tags+=("${2:?--tag needs a name}"); shift 2 ;;
    --platform) platform="${2:?--platform needs a value}"; shift 2 ;;
    --push) push=1; shift ;;
    --no-mlflow) mlflow=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$variant" in
  cpu) variants=(cpu) ;;
  cuda) variants=(cuda); mlflow=0 ;;  # the tracking server image is built from the cpu base
  all) variants=(cpu cuda) ;;
  *) echo "build.sh: --variant must be cpu, cuda or all" >&2; exit 2 ;;
esac

cd "$root"
sha="$(git rev-parse --short=12 HEAD)"
git diff --quiet HEAD -- 2>/dev/null || sha="${sha}-dirty"
version="$(sed -n 's/^version *= *"\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
# The source label: the origin remote, without any credentials embedded in the URL; a
# local path is no use to a reader of the image, so it is left out.
source_url="$(git config --get remote.origin.url || true)"
source_url="$(printf '%s' "$source_url" | sed -E 's#^(https?://)[^/@]*@#\1#')"
case "$source_url" in http://*|https://*|git@*|ssh://*) ;; *) source_url="" ;; esac

metadata_dir="$(mktemp -d)"
trap 'rm -rf "$metadata_dir"' EXIT

# build TARGET VARIANT REPO TAG_SUFFIX: one image, tagged with the SHA and each --tag.
build() {
  local target="$1" var="$2" repo="$3" suffix="$4"
  local tags=(-t "${repo}:${sha}${suffix}")
  local t
  for t in ${extra_tags[@]+"${extra_tags[@]}"}; do tags+=(-t "${repo}:${t}${suffix}"); done
  local out=(--load)
  [[ "$push" == 1 ]] && out=(--push)
  local plat=()
  [[ -n "$platform" ]] && plat=(--platform "$platform")
  local meta="${metadata_dir}/${target}-${var}.json"
  echo "build.sh: ${repo}:${sha}${suffix} (target ${target}, variant ${var})" >&2
  "$docker" buildx build -f infra/docker/Dockerfile --target "$target" \
    --build-arg VARIANT="$var" \
    --build-arg VERSION="$version" \
    --build-arg REVISION="$(git rev-parse HEAD)" \
    --build-arg SOURCE_URL="$source_url" \
    --build-arg CREATED="$created" \
    "${tags[@]}" ${plat[@]+"${plat[@]}"} "${out[@]}" --metadata-file "$meta" .
  if [[ "$push" == 1 ]]; then
    # buildx records the pushed manifest's digest in the metadata file.
    local digest
    digest="$(grep -o '"containerimage.digest": *"sha256:[0-9a-f]*"' "$meta" | grep -o 'sha256:[0-9a-f]*')"
    echo "${repo}@${digest}"
  fi
}

for v in "${variants[@]}"; do
  build runtime "$v" "$image" "-$v"
done
if [[ "$mlflow" == 1 ]]; then
  build mlflow-server cpu "${image}-mlflow" ""
fi
