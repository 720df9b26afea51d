#!/usr/bin/env bash
# Builds (and optionally pushes) the platform images with tags derived from the git SHA.
#
#   bash infra/docker/build.sh                        # cpu image + mlflow-server image
#   bash infra/docker/build.sh --variant cuda         # the CUDA image only
#   bash infra/docker/build.sh --variant all --push   # cpu, cuda and mlflow-server, pushed
#   IMAGE=registry.example.com/ml/tipsv2 bash infra/docker/build.sh --push
#   bash infra/docker/build.sh --local --no-mlflow    # no registry, no daemon (buildah)
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
# SSL_CERT_FILE, when set, reaches the steps that download packages as the build secret
# `ca-certs` (for a TLS-intercepting proxy); it never lands in a layer.
#
# --local: the cpu image (and mlflow-server) with no container registry and no daemon,
# the same Dockerfile built by `buildah build --isolation chroot` into local storage
# (buildah, mmdebstrap: Debian packages; run as root). The base is a Debian bookworm root
# filesystem made by mmdebstrap from Debian's packages (Python 3.11 included, cached as
# localhost/tipsv2-base:bookworm-<date>, so it is remade once a day), uv comes from the uv
# wheel of the package index (localhost/tipsv2-uv:<version>), and torch from a CPU wheel
# found in $PIP_FIND_LINKS (copied into infra/docker/wheels/), else from the CPU index.
# The last line printed is the image reference, for `tipsv2 pipeline compile --image`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image="${IMAGE:-tipsv2}"
docker="${DOCKER:-docker}"
variant=cpu
mlflow=1
push=0
platform=""
local_build=0
extra_tags=()

usage() { sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) variant="${2:?--variant needs cpu, cuda or all}"; shift 2 ;;
    --tag) extra_tags+=("${2:?--tag needs a name}"); shift 2 ;;
    --platform) platform="${2:?--platform needs a value}"; shift 2 ;;
    --push) push=1; shift ;;
    --no-mlflow) mlflow=0; shift ;;
    --local) local_build=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ "$local_build" == 1 ]]; then
  [[ "$variant" == cpu ]] || { echo "build.sh: --local builds the cpu variant only (the cuda base comes from a registry)" >&2; exit 2; }
  [[ "$push" == 0 && -z "$platform" ]] || { echo "build.sh: --local takes neither --push nor --platform" >&2; exit 2; }
fi
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
# The staged wheels (--local) go too: they are there for one build only.
trap 'rm -rf "$metadata_dir"; rm -f "$root"/infra/docker/wheels/*.whl' EXIT

secret=()
if [[ -n "${SSL_CERT_FILE:-}" && -f "${SSL_CERT_FILE}" ]]; then
  secret=(--secret "id=ca-certs,src=${SSL_CERT_FILE}")
fi

# ---- --local: base and uv images made here, then buildah ---------------------------------

# Build arguments of a --local build (set by prepare_local).
local_args=()

need() {
  command -v "$1" > /dev/null \
    || { echo "build.sh --local: $1 is not installed (Debian: apt-get install $2)" >&2; exit 3; }
}

have_image() { buildah inspect --type image "$1" > /dev/null 2>&1; }

# localhost/tipsv2-base:bookworm-<date>: Debian's minimal system plus Python 3.11 and what
# the Dockerfile's base stage installs anyway, without documentation (kept: copyrights).
make_base() {
  local ref="$1" rootfs="${metadata_dir}/rootfs.tar" ctr
  echo "build.sh: making the base ${ref} (mmdebstrap)" >&2
  mmdebstrap --quiet --variant=minbase --include=python3,ca-certificates,tini,wget \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$rootfs" >&2
  ctr="$(buildah from scratch)"
  buildah add --quiet "$ctr" "$rootfs" / > /dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
  buildah commit --quiet --rm "$ctr" "$ref" > /dev/null
  rm -f "$rootfs"
}

# localhost/tipsv2-uv:<version>: /uv and /uvx from the uv wheel (what the official uv
# image holds), fetched from the package index with pip.
make_uv() {
  local ref="$1" version="$2" dir="${metadata_dir}/uv" ctr
  echo "build.sh: making ${ref} from the uv ${version} wheel" >&2
  "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: \
    -d "$dir" "uv==${version}" >&2
  "${PYTHON:-python3}" - "$dir" <<'PY'
import pathlib, sys, zipfile
d = pathlib.Path(sys.argv[1])
(wheel,) = d.glob("uv-*.whl")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith(("/scripts/uv", "/scripts/uvx")):
            target = d / name.rsplit("/", 1)[1]
            target.write_bytes(z.read(name))
            target.chmod(0o755)
PY
  ctr="$(buildah from scratch)"
  buildah copy --quiet "$ctr" "${dir}/uv" "${dir}/uvx" / > /dev/null
  buildah commit --quiet --rm "$ctr" "$ref" > /dev/null
}

# The lock's torch as a CPU wheel from the folders of $PIP_FIND_LINKS, hard-linked (or
# copied) into infra/docker/wheels/; none there: the CPU index.
stage_torch_wheel() {
  local version dir wheel
  version="$(sed -n 's/^torch==\(.*\)$/\1/p' requirements-dev.lock)"
  rm -f infra/docker/wheels/*.whl
  for dir in ${PIP_FIND_LINKS:-}; do
    for wheel in "$dir"/torch-"$version"+cpu-cp311-cp311-*linux*_x86_64.whl; do
      [[ -f "$wheel" ]] || continue
      ln "$wheel" infra/docker/wheels/ 2> /dev/null || cp "$wheel" infra/docker/wheels/
      echo "build.sh: torch from the wheel $(basename "$wheel")" >&2
      local_args+=(--build-arg TORCH_FROM=wheels)
      return
    done
  done
  echo "build.sh: no torch ${version}+cpu wheel in \$PIP_FIND_LINKS; torch from the CPU index" >&2
}

prepare_local() {
  need buildah buildah
  need mmdebstrap mmdebstrap
  [[ "$(id -u)" == 0 ]] || { echo "build.sh --local: run as root (buildah --isolation chroot, mmdebstrap)" >&2; exit 3; }
  local uv_version base uv_image
  uv_version="$(sed -n 's/^ARG UV_VERSION=//p' infra/docker/Dockerfile)"
  base="localhost/tipsv2-base:bookworm-$(date -u +%Y%m%d)"
  uv_image="localhost/tipsv2-uv:${uv_version}"
  have_image "$base" || make_base "$base"
  have_image "$uv_image" || make_uv "$uv_image" "$uv_version"
  local_args+=(--build-arg CPU_BASE="$base" --build-arg UV_IMAGE="$uv_image")
  stage_torch_wheel
}

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
  if [[ "$local_build" == 1 ]]; then
    # --layers: each instruction's result is cached in local storage like BuildKit's
    # cache, so a source change rebuilds only the last layers.
    buildah build --isolation chroot --layers -f infra/docker/Dockerfile --target "$target" \
      --build-arg VARIANT="$var" \
      --build-arg VERSION="$version" \
      --build-arg REVISION="$(git rev-parse HEAD)" \
      --build-arg SOURCE_URL="$source_url" \
      --build-arg CREATED="$created" \
      "${local_args[@]}" ${secret[@]+"${secret[@]}"} "${tags[@]}" . >&2
    # buildah names an image without a registry host localhost/NAME.
    local first="${repo%%/*}"
    if [[ "$repo" == */* && ( "$first" == *.* || "$first" == *:* || "$first" == localhost ) ]]; then
      echo "${repo}:${sha}${suffix}"
    else
      echo "localhost/${repo}:${sha}${suffix}"
    fi
    return
  fi
  "$docker" buildx build -f infra/docker/Dockerfile --target "$target" \
    --build-arg VARIANT="$var" \
    --build-arg VERSION="$version" \
    --build-arg REVISION="$(git rev-parse HEAD)" \
    --build-arg SOURCE_URL="$source_url" \
    --build-arg CREATED="$created" \
    ${secret[@]+"${secret[@]}"} \
    "${tags[@]}" ${plat[@]+"${plat[@]}"} "${out[@]}" --metadata-file "$meta" .
  if [[ "$push" == 1 ]]; then
    # buildx records the pushed manifest's digest in the metadata file.
    local digest
    digest="$(grep -o '"containerimage.digest": *"sha256:[0-9a-f]*"' "$meta" | grep -o 'sha256:[0-9a-f]*')"
    echo "${repo}@${digest}"
  fi
}

[[ "$local_build" == 1 ]] && prepare_local
for v in "${variants[@]}"; do
  build runtime "$v" "$image" "-$v"
done
if [[ "$mlflow" == 1 ]]; then
  build mlflow-server cpu "${image}-mlflow" ""
fi
