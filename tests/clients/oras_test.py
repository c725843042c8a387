#!/usr/bin/env python3
"""ORAS (Python `oras` package) steps of the client suite.

Run with the suite's venv python:
  oras_test.py artifact  REGISTRY REPO WORKDIR
      push an artifact with the high-level OrasClient.push (custom config media type,
      chunked upload), pull it back and compare the files byte for byte; then push a second
      artifact with an explicit `artifactType` and the OCI empty config using the client's
      lower-level calls (upload_blob, upload_manifest) and read it back.
  image     REGISTRY REPO WORKDIR LAYOUT REF
      push an OCI image from an image layout with upload_blob (monolithic and chunked) and
      a raw-bytes manifest PUT through the client's do_request, tag `image`; the registry
      must hand back the same bytes (same digest) as the layout.
  referrers REGISTRY REPO WORKDIR
      push two artifacts whose `subject` is that image: a signature stand-in with an
      explicit artifactType and annotations (low-level calls), and an SBOM stand-in with
      OrasClient.push(subject=...) and a custom config media type (no artifactType field).
      Records the OCI-Subject answers (run.sh checks them) and the digests; run.sh then
      queries the referrers API with curl.

Every step writes what it learned to WORKDIR/oras-state.json and exits non-zero on failure.
"""

import hashlib
import json
import os
import sys

import oras.client
import oras.defaults
import oras.oci

ARTIFACT_TYPE = "application/vnd.berth.e2e.artifact.v1"
ARTIFACT_CONFIG_TYPE = "application/vnd.berth.e2e.config.v1+json"
SIGNATURE_TYPE = "application/vnd.berth.e2e.signature.v1"
SBOM_CONFIG_TYPE = "application/vnd.berth.e2e.sbom.config.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Fail(Exception):
    pass


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def state_path(workdir):
    return os.path.join(workdir, "oras-state.json")


def load_state(workdir):
    try:
        with open(state_path(workdir)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def save_state(workdir, **kv):
    st = load_state(workdir)
    st.update(kv)
    with open(state_path(workdir), "w") as f:
        json.dump(st, f, indent=2)


def client_for(registry):
    return oras.client.OrasClient(hostname=registry, insecure=True)


def get_raw_manifest(client, registry, repo, ref):
    r = client.do_request(f"http://{registry}/v2/{repo}/manifests/{ref}", "GET",
                          headers={"Accept": MT_MANIFEST + ", application/vnd.oci.image.index.v1+json"})
    check(r.status_code == 200, f"GET manifest {repo}:{ref} -> {r.status_code} {r.text[:300]}")
    return r.content, r.headers


def upload(client, target, path, media_type, chunked=False):
    layer = oras.oci.NewLayer(path, media_type=media_type)
    r = client.upload_blob(path, target, layer, do_chunked=chunked, chunk_size=256 * 1024)
    check(r.status_code in (200, 201, 202), f"upload of {path} -> {r.status_code} {r.text[:300]}")
    return {"mediaType": media_type, "digest": layer["digest"], "size": layer["size"]}


def put_manifest(client, registry, repo, ref, data, media_type=MT_MANIFEST):
    r = client.do_request(f"http://{registry}/v2/{repo}/manifests/{ref}", "PUT",
                          data=data, headers={"Content-Type": media_type})
    check(r.status_code == 201, f"PUT manifest {repo}:{ref} -> {r.status_code} {r.text[:300]}")
    return r


def cmd_artifact(registry, repo, workdir):
    os.makedirs(os.path.join(workdir, "art"), exist_ok=True)
    os.chdir(os.path.join(workdir, "art"))
    client = client_for(registry)
    with open("readme.txt", "wb") as f:
        f.write(b"berth e2e artifact\n" + os.urandom(8).hex().encode() + b"\n")
    with open("data.bin", "wb") as f:
        f.write(os.urandom(700 * 1024))  # several 256 KiB chunks
    with open("config.json", "w") as f:
        json.dump({"tool": "berth-e2e", "nonce": os.urandom(4).hex()}, f)

    # 1. high-level push: custom config media type, chunked POST/PATCH/PUT upload
    target = f"{registry}/{repo}:v1"
    r = client.push(files=["readme.txt:text/plain", "data.bin:application/octet-stream"],
                    target=target, manifest_config=f"config.json:{ARTIFACT_CONFIG_TYPE}",
                    manifest_annotations={"org.example.berth.e2e": "artifact"},
                    do_chunked=True, chunk_size=256 * 1024, quiet=True)
    check(r.status_code == 201, f"push answered {r.status_code}")
    raw, _ = get_raw_manifest(client, registry, repo, "v1")
    m = json.loads(raw)
    check(m["config"]["mediaType"] == ARTIFACT_CONFIG_TYPE, f"config media type {m['config']}")
    check([l["mediaType"] for l in m["layers"]] == ["text/plain", "application/octet-stream"],
          f"layer media types {m['layers']}")

    # pull back into another directory and compare byte for byte
    out = os.path.join(workdir, "art-pulled")
    files = client.pull(target=target, outdir=out)
    check(sorted(os.path.basename(p) for p in files) == ["data.bin", "readme.txt"], f"pulled {files}")
    for name in ("readme.txt", "data.bin"):
        with open(name, "rb") as a, open(os.path.join(out, name), "rb") as b:
            check(a.read() == b.read(), f"pulled {name} differs from pushed")
    print(f"artifact v1 {sha256(raw)}: pushed, pulled back, 2 files byte-identical")

    # 2. explicit artifactType with the OCI empty config, built by hand, low-level calls
    with open("empty.json", "wb") as f:
        f.write(b"{}")
    with open("payload.json", "w") as f:
        json.dump({"kind": "berth-e2e-payload", "nonce": os.urandom(4).hex()}, f)
    cfg = upload(client, target, "empty.json", EMPTY_TYPE)
    check(cfg["digest"] == oras.defaults.blank_config_hash, f"empty config digest {cfg['digest']}")
    lay = upload(client, target, "payload.json", "application/json")
    lay["annotations"] = {"org.opencontainers.image.title": "payload.json"}
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "artifactType": ARTIFACT_TYPE,
                "config": cfg, "layers": [lay],
                "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}}
    r = client.upload_manifest(manifest, client.get_container(f"{registry}/{repo}:typed"))
    check(r.status_code == 201, f"upload_manifest answered {r.status_code} {r.text[:300]}")
    sent = json.dumps(manifest).encode()  # what requests sent for json=manifest
    raw, headers = get_raw_manifest(client, registry, repo, "typed")
    check(raw == sent, "stored manifest bytes differ from the bytes pushed")
    check(headers.get("Docker-Content-Digest") in (None, sha256(raw)),
          f"Docker-Content-Digest {headers.get('Docker-Content-Digest')} != {sha256(raw)}")
    check(json.loads(raw).get("artifactType") == ARTIFACT_TYPE, "artifactType lost")
    # fetch by digest too, and the blob
    raw2, _ = get_raw_manifest(client, registry, repo, sha256(raw))
    check(raw2 == raw, "manifest by digest differs")
    blob = client.get_blob(client.get_container(f"{registry}/{repo}:typed"), lay["digest"])
    with open("payload.json", "rb") as f:
        check(blob.content == f.read(), "payload blob differs")
    print(f"artifact typed {sha256(raw)}: artifactType {ARTIFACT_TYPE} kept, bytes identical")
    save_state(workdir, artifact_v1=sha256(get_raw_manifest(client, registry, repo, "v1")[0]),
               artifact_typed=sha256(raw))


def cmd_image(registry, repo, workdir, layout, ref):
    client = client_for(registry)
    with open(os.path.join(layout, "index.json")) as f:
        idx = json.load(f)
    desc = [d for d in idx["manifests"]
            if (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref][0]

    def blob_path(digest):
        return os.path.join(layout, "blobs", "sha256", digest.split(":")[1])

    with open(blob_path(desc["digest"]), "rb") as f:
        raw = f.read()
    m = json.loads(raw)
    target = f"{registry}/{repo}:image"
    for i, d in enumerate([m["config"]] + m["layers"]):
        layer = {"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}
        r = client.upload_blob(blob_path(d["digest"]), target, layer,
                               do_chunked=(d["size"] > 1024 * 1024), chunk_size=1024 * 1024)
        check(r.status_code in (200, 201, 202), f"blob {d['digest']} -> {r.status_code} {r.text[:300]}")
    put_manifest(client, registry, repo, "image", raw)
    got, headers = get_raw_manifest(client, registry, repo, "image")
    check(got == raw, "registry answers other bytes than the layout's manifest")
    check(sha256(got) == desc["digest"], f"digest {sha256(got)} != {desc['digest']}")
    print(f"image {desc['digest']} pushed with oras upload_blob + raw PUT, {len(m['layers'])} layers")
    save_state(workdir, image_digest=desc["digest"], image_size=len(raw))


def cmd_referrers(registry, repo, workdir):
    st = load_state(workdir)
    subject = {"mediaType": MT_MANIFEST, "digest": st["image_digest"], "size": st["image_size"]}
    os.makedirs(os.path.join(workdir, "ref"), exist_ok=True)
    os.chdir(os.path.join(workdir, "ref"))
    client = client_for(registry)
    container = client.get_container(f"{registry}/{repo}:image")

    # signature stand-in: explicit artifactType, empty config, annotations; pushed by digest
    with open("empty.json", "wb") as f:
        f.write(b"{}")
    with open("signature.sig", "wb") as f:
        f.write(b"not really a signature " + os.urandom(16).hex().encode())
    cfg = upload(client, container, "empty.json", EMPTY_TYPE)
    lay = upload(client, container, "signature.sig", "application/vnd.berth.e2e.signature.payload")
    sig = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "artifactType": SIGNATURE_TYPE,
           "config": cfg, "layers": [lay], "subject": subject,
           "annotations": {"org.example.berth.e2e.signer": "e2e-test"}}
    sig_raw = json.dumps(sig, separators=(",", ":")).encode()
    sig_digest = sha256(sig_raw)
    r = put_manifest(client, registry, repo, sig_digest, sig_raw)
    sig_subject_header = r.headers.get("OCI-Subject")
    got, _ = get_raw_manifest(client, registry, repo, sig_digest)
    check(got == sig_raw, "signature manifest bytes differ")

    # SBOM stand-in: high-level push with subject, custom config media type, no artifactType
    with open("sbom.json", "w") as f:
        json.dump({"spdxVersion": "SPDX-2.3", "name": "berth-e2e", "nonce": os.urandom(4).hex()}, f)
    with open("sbom-config.json", "w") as f:
        json.dump({"generator": "berth-e2e"}, f)
    r = client.push(files=["sbom.json:application/spdx+json"], target=f"{registry}/{repo}:sbom",
                    manifest_config=f"sbom-config.json:{SBOM_CONFIG_TYPE}",
                    manifest_annotations={"org.example.berth.e2e.kind": "sbom"},
                    subject=oras.oci.Subject(**subject), quiet=True)
    check(r.status_code == 201, f"SBOM push answered {r.status_code}")
    sbom_subject_header = r.headers.get("OCI-Subject")
    sbom_raw, _ = get_raw_manifest(client, registry, repo, "sbom")
    check(json.loads(sbom_raw).get("subject", {}).get("digest") == st["image_digest"],
          "SBOM manifest lost its subject")

    save_state(workdir, signature_digest=sig_digest, signature_size=len(sig_raw),
               sbom_digest=sha256(sbom_raw), sbom_size=len(sbom_raw),
               signature_type=SIGNATURE_TYPE, sbom_type=SBOM_CONFIG_TYPE,
               signature_oci_subject=sig_subject_header, sbom_oci_subject=sbom_subject_header)
    print(f"signature {sig_digest} and SBOM {sha256(sbom_raw)} pushed with subject {st['image_digest']}")
    print(f"OCI-Subject answers: signature {sig_subject_header!r}, SBOM {sbom_subject_header!r}")


def main(argv):
    cmds = {"artifact": (cmd_artifact, 3), "image": (cmd_image, 5), "referrers": (cmd_referrers, 3)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    fn, _ = cmds[argv[1]]
    args = argv[2:]
    args[2] = os.path.abspath(args[2])  # WORKDIR
    if argv[1] == "image":
        args[3] = os.path.abspath(args[3])  # LAYOUT
    try:
        fn(*args)
    except Fail as e:
        print(f"oras {argv[1]}: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
