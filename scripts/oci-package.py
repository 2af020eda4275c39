#!/usr/bin/env python3
"""Packages the filter as an OCI image layout for Istio's `oci://` WasmPlugin URLs, without
Docker: `scripts/oci-package.py OUT_DIR [--wasm FILE] [--tag TAG]`.

The layout holds one image: a gzip'd tar layer with `plugin.wasm` at its root (the file name
Istio's fetcher looks for) and an image config whose `rootfs.diff_ids` is the digest of the
uncompressed tar. Push it with any OCI tool, e.g. `oras cp --from-oci-layout OUT:TAG
registry/repo:TAG`, `skopeo copy oci:OUT:TAG docker://registry/repo:TAG` or `crane push OUT ...`."""

import argparse
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    (out / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (out / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def package(wasm: Path, out: Path, tag: str):
    module = wasm.read_bytes()
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(module), 0o444, 0
        tar.addfile(info, io.BytesIO(module))
    layer_tar = tar_buf.getvalue()
    layer_gz = gzip.compress(layer_tar, mtime=0)  # reproducible: same module, same digests
    layer_digest, layer_size = blob(out, layer_gz)
    config = {
        "architecture": "wasm", "os": "wasip1",
        "config": {"Labels": {"org.opencontainers.image.title": "custom-error-pages"}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
        "history": [{"created_by": "scripts/oci-package.py"}],
    }
    config_digest, config_size = blob(out, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size,
                    "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}],
    }
    manifest_digest, manifest_size = blob(out, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (out / "index.json").write_text(json.dumps(index, indent=2))
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--wasm", type=Path, default=ROOT / "target/wasm32-wasip1/release/custom_error_pages.wasm")
    ap.add_argument("--tag", default="latest")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    digest = package(args.wasm, args.out, args.tag)
    print(f"{args.out}: OCI image layout, tag {args.tag}, manifest {digest}")


if __name__ == "__main__":
    main()
