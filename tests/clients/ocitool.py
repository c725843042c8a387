#!/usr/bin/env python3
"""Small OCI helper for the client end-to-end suite (standard library only).

Image sources are written as
  oci:PATH:REF   an OCI image layout; REF is an org.opencontainers.image.ref.name
                 annotation in index.json, or a sha256:... digest
  dir:PATH       a containers/image "dir:" directory (manifest.json + blobs by hex)
  reg:HOST:PORT/REPO:TAG or reg:HOST:PORT/REPO@sha256:...
                 a registry over plain HTTP (no auth)

Commands (each exits non-zero with a message on stderr when a check fails):
  zstd-layer LAYOUT SRCREF DSTREF N     copy SRCREF to DSTREF with layer N zstd-compressed
  config-set LAYOUT SRCREF DSTREF KEY VALUE   copy SRCREF to DSTREF with config[KEY]=VALUE
  make-index LAYOUT DSTREF REF...       write an OCI index of REF... (platform from config)
  digest SRC                            print the top manifest digest
  config-digest SRC                     print the config digest (image manifests only)
  verify SRC                            check every blob's digest and size, and that every
                                        layer decompresses to its config diff_id
  same-content SRC EXPECTED             check SRC holds the same images as EXPECTED: same
                                        config digests and same uncompressed layers (diff_ids),
                                        whatever the compression or manifest format
  identical SRC EXPECTED                check byte identity: same top digest and every
                                        manifest, config and layer blob byte for byte equal
  docker-save TAR EXPECTED              check a `docker save` tarball: config and layer.tar
                                        files match EXPECTED's config digest and diff_ids
"""

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_ACCEPT = ", ".join([MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST])


class CheckError(Exception):
    pass


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canon(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------- sources


class Source:
    """Gives manifests and blobs by digest, and the top manifest."""

    def top(self):
        raise NotImplementedError

    def blob(self, digest):
        raise NotImplementedError

    def manifest(self, digest):
        return self.blob(digest)

    def name(self):
        return self.spec


class Layout(Source):
    def __init__(self, spec, path, ref):
        self.spec, self.path, self.ref = spec, path, ref

    def index(self):
        with open(os.path.join(self.path, "index.json"), "rb") as f:
            return json.load(f)

    def descriptor(self):
        idx = self.index()
        for d in idx.get("manifests", []):
            if self.ref.startswith("sha256:"):
                if d["digest"] == self.ref:
                    return d
            elif (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") == self.ref:
                return d
        if not self.ref and len(idx.get("manifests", [])) == 1:
            return idx["manifests"][0]
        raise CheckError(f"{self.spec}: reference {self.ref!r} not in index.json")

    def top(self):
        d = self.descriptor()
        data = self.blob(d["digest"])
        return d["digest"], d.get("mediaType") or json.loads(data).get("mediaType"), data

    def blob_path(self, digest):
        algo, hexd = digest.split(":", 1)
        return os.path.join(self.path, "blobs", algo, hexd)

    def blob(self, digest):
        try:
            with open(self.blob_path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise CheckError(f"{self.spec}: blob {digest} missing")


class Dir(Source):
    def __init__(self, spec, path):
        self.spec, self.path = spec, path

    def top(self):
        with open(os.path.join(self.path, "manifest.json"), "rb") as f:
            data = f.read()
        return sha256(data), json.loads(data).get("mediaType"), data

    def blob(self, digest):
        p = os.path.join(self.path, digest.split(":", 1)[1])
        if not os.path.exists(p):
            # a dir: copy of an index keeps the per-platform manifests by digest
            top = self.top()
            if top[0] == digest:
                return top[2]
            raise CheckError(f"{self.spec}: blob {digest} missing")
        with open(p, "rb") as f:
            return f.read()


class Registry(Source):
    def __init__(self, spec, ref):
        self.spec = spec
        host, rest = ref.split("/", 1)
        if "@" in rest:
            self.repo, self.ref = rest.split("@", 1)
        elif ":" in rest.rsplit("/", 1)[-1]:
            self.repo, self.ref = rest.rsplit(":", 1)
        else:
            self.repo, self.ref = rest, "latest"
        self.base = f"http://{host}/v2/{self.repo}"
        self.cache = {}

    def get(self, url, accept=None):
        req = urllib.request.Request(url)
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            body = e.read()[:500]
            raise CheckError(f"GET {url} -> {e.code} {body!r}")

    def fetch_manifest(self, ref):
        data, headers = self.get(f"{self.base}/manifests/{ref}", MANIFEST_ACCEPT)
        dcd = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest")
        d = sha256(data)
        if dcd and dcd != d:
            raise CheckError(f"{self.spec}: Docker-Content-Digest {dcd} != sha256 of body {d}")
        if ref.startswith("sha256:") and ref != d:
            raise CheckError(f"{self.spec}: manifest fetched by {ref} hashes to {d}")
        ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "").split(";")[0]
        self.cache[d] = data
        return d, ctype, data

    def top(self):
        return self.fetch_manifest(self.ref)

    def manifest(self, digest):
        if digest in self.cache:
            return self.cache[digest]
        return self.fetch_manifest(digest)[2]

    def blob(self, digest):
        data, _ = self.get(f"{self.base}/blobs/{digest}")
        return data


def open_source(spec):
    kind, _, rest = spec.partition(":")
    if kind == "oci":
        m = re.match(r"^(.*):(sha256:[0-9a-f]{64})$", rest)
        if m:
            return Layout(spec, m.group(1), m.group(2))
        path, sep, ref = rest.rpartition(":")
        return Layout(spec, path, ref) if sep else Layout(spec, rest, "")
    if kind == "dir":
        return Dir(spec, rest)
    if kind == "reg":
        return Registry(spec, rest)
    raise SystemExit(f"unknown source {spec!r} (want oci:, dir: or reg:)")


# ---------------------------------------------------------------- walking


def decompress(data, media_type):
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        p = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True)
        return p.stdout
    if media_type.endswith("+gzip") or media_type.endswith("+zstd") or media_type.endswith(".gzip"):
        raise CheckError(f"layer of type {media_type} is not compressed as it says")
    return data


def media_type_of(data, hint=None):
    mt = json.loads(data).get("mediaType") or hint
    if not mt:
        mt = MT_OCI_INDEX if "manifests" in json.loads(data) else MT_OCI_MANIFEST
    return mt


def walk(src, digest, data, mt, out, check_blobs=True):
    """Collect images: list of dicts {manifest_digest, config_digest, diff_ids, layers}."""
    if sha256(data) != digest:
        raise CheckError(f"{src.name()}: manifest {digest} hashes to {sha256(data)}")
    doc = json.loads(data)
    mt = doc.get("mediaType") or mt or media_type_of(data)
    if mt in INDEX_TYPES or "manifests" in doc:
        children = []
        for d in doc["manifests"]:
            cdata = src.manifest(d["digest"])
            if len(cdata) != d["size"]:
                raise CheckError(f"{src.name()}: manifest {d['digest']} size {len(cdata)} != {d['size']}")
            children.append(walk(src, d["digest"], cdata, d.get("mediaType"), out, check_blobs))
        return {"index": digest, "children": children}
    cfgd = doc["config"]
    cfg = src.blob(cfgd["digest"])
    if sha256(cfg) != cfgd["digest"] or len(cfg) != cfgd["size"]:
        raise CheckError(f"{src.name()}: config {cfgd['digest']} does not match its descriptor")
    info = {"manifest": digest, "config": cfgd["digest"], "config_mt": cfgd.get("mediaType"),
            "layers": [], "diff_ids": []}
    is_image = cfgd.get("mediaType") in ("application/vnd.oci.image.config.v1+json",
                                          "application/vnd.docker.container.image.v1+json")
    diff_ids = json.loads(cfg).get("rootfs", {}).get("diff_ids", []) if is_image else []
    for i, l in enumerate(doc.get("layers", [])):
        info["layers"].append(l["digest"])
        if not check_blobs:
            continue
        b = src.blob(l["digest"])
        if sha256(b) != l["digest"] or len(b) != l["size"]:
            raise CheckError(f"{src.name()}: layer {l['digest']} does not match its descriptor "
                             f"(got {sha256(b)}, {len(b)} bytes)")
        if is_image:
            u = decompress(b, l.get("mediaType", ""))
            if i >= len(diff_ids) or sha256(u) != diff_ids[i]:
                raise CheckError(f"{src.name()}: layer {i} ({l['digest']}) uncompressed is "
                                 f"{sha256(u)}, config diff_id is {diff_ids[i] if i < len(diff_ids) else None}")
            info["diff_ids"].append(sha256(u))
    out.append(info)
    return info


def images(spec, check_blobs=True):
    src = open_source(spec)
    digest, mt, data = src.top()
    out = []
    tree = walk(src, digest, data, mt, out, check_blobs)
    return src, digest, tree, out


def image_key(info):
    return (info["config"], tuple(info["diff_ids"]))


# ---------------------------------------------------------------- commands


def cmd_verify(spec):
    _, digest, _, out = images(spec)
    print(digest)
    for i in out:
        print(f"  image {i['manifest']} config {i['config']} layers {len(i['layers'])}", file=sys.stderr)


def cmd_same_content(spec, expected):
    _, d1, _, a = images(spec)
    _, d2, _, b = images(expected)
    ka = sorted(image_key(i) for i in a)
    kb = sorted(image_key(i) for i in b)
    if ka != kb:
        raise CheckError(f"content differs:\n  {spec}: {ka}\n  {expected}: {kb}")
    print(f"same content: {len(ka)} image(s), {sum(len(k[1]) for k in ka)} layer(s); {spec} top {d1}")


def cmd_identical(spec, expected):
    s1, d1, _, a = images(spec)
    s2, d2, _, b = images(expected)
    if d1 != d2:
        raise CheckError(f"top digest {d1} ({spec}) != {d2} ({expected})")
    if s1.manifest(d1) != s2.manifest(d2):
        raise CheckError("top manifest bytes differ")
    if len(a) != len(b):
        raise CheckError(f"{len(a)} images vs {len(b)}")
    n = 0
    for x, y in zip(sorted(a, key=lambda i: i["manifest"]), sorted(b, key=lambda i: i["manifest"])):
        if x["manifest"] != y["manifest"]:
            raise CheckError(f"manifest {x['manifest']} != {y['manifest']}")
        if s1.manifest(x["manifest"]) != s2.manifest(y["manifest"]):
            raise CheckError(f"manifest {x['manifest']} bytes differ")
        for dg in [x["config"]] + x["layers"]:
            if s1.blob(dg) != s2.blob(dg):
                raise CheckError(f"blob {dg} bytes differ")
            n += 1
    print(f"identical: {d1}, {len(a)} image(s), {n} blob(s) byte-for-byte equal")


def cmd_docker_save(tar, expected):
    _, _, _, b = images(expected)
    if len(b) != 1:
        raise CheckError("docker-save expects a single image")
    exp = b[0]
    with tarfile.open(tar) as t:
        manifest = json.load(t.extractfile("manifest.json"))
        if len(manifest) != 1:
            raise CheckError(f"docker save tar holds {len(manifest)} images")
        m = manifest[0]
        cfg = t.extractfile(m["Config"]).read()
        if sha256(cfg) != exp["config"]:
            raise CheckError(f"saved config {sha256(cfg)} != {exp['config']}")
        got = [sha256(t.extractfile(p).read()) for p in m["Layers"]]
    if got != exp["diff_ids"]:
        raise CheckError(f"saved layers {got} != diff_ids {exp['diff_ids']}")
    print(f"docker save: config {exp['config']} and {len(got)} layer tars match")


def load_layout(path):
    with open(os.path.join(path, "index.json")) as f:
        return json.load(f)


def write_blob(path, data):
    d = sha256(data)
    p = os.path.join(path, "blobs", "sha256", d.split(":")[1])
    with open(p, "wb") as f:
        f.write(data)
    return d


def set_ref(path, ref, desc):
    idx = load_layout(path)
    idx["manifests"] = [d for d in idx["manifests"]
                        if (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") != ref]
    desc = dict(desc)
    desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    idx["manifests"].append(desc)
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(idx, f)


def cmd_zstd_layer(path, src_ref, dst_ref, n):
    lay = Layout("oci:" + path, path, src_ref)
    desc = lay.descriptor()
    m = json.loads(lay.blob(desc["digest"]))
    layer = m["layers"][int(n)]
    raw = decompress(lay.blob(layer["digest"]), layer["mediaType"])
    z = subprocess.run(["zstd", "-q", "-c", "-10"], input=raw, capture_output=True, check=True).stdout
    layer["digest"] = write_blob(path, z)
    layer["size"] = len(z)
    layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    data = json.dumps(m, indent=2).encode()
    set_ref(path, dst_ref, {"mediaType": MT_OCI_MANIFEST, "digest": write_blob(path, data), "size": len(data)})
    print(sha256(data))


def cmd_config_set(path, src_ref, dst_ref, key, value):
    lay = Layout("oci:" + path, path, src_ref)
    desc = lay.descriptor()
    m = json.loads(lay.blob(desc["digest"]))
    cfg = json.loads(lay.blob(m["config"]["digest"]))
    cfg[key] = value
    cdata = json.dumps(cfg).encode()
    m["config"]["digest"] = write_blob(path, cdata)
    m["config"]["size"] = len(cdata)
    data = json.dumps(m, indent=2).encode()
    set_ref(path, dst_ref, {"mediaType": MT_OCI_MANIFEST, "digest": write_blob(path, data), "size": len(data)})
    print(sha256(data))


def cmd_make_index(path, dst_ref, *refs):
    manifests = []
    for r in refs:
        lay = Layout("oci:" + path, path, r)
        desc = lay.descriptor()
        m = json.loads(lay.blob(desc["digest"]))
        cfg = json.loads(lay.blob(m["config"]["digest"]))
        plat = {"architecture": cfg["architecture"], "os": cfg["os"]}
        if cfg.get("variant"):
            plat["variant"] = cfg["variant"]
        manifests.append({"mediaType": MT_OCI_MANIFEST, "digest": desc["digest"],
                          "size": desc["size"], "platform": plat})
    idx = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": manifests,
           "annotations": {"org.opencontainers.image.description": "berth client e2e multi-arch"}}
    data = json.dumps(idx, indent=2).encode()
    set_ref(path, dst_ref, {"mediaType": MT_OCI_INDEX, "digest": write_blob(path, data), "size": len(data)})
    print(sha256(data))


def cmd_digest(spec):
    print(open_source(spec).top()[0])


def cmd_config_digest(spec):
    src = open_source(spec)
    _, _, data = src.top()
    print(json.loads(data)["config"]["digest"])


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmds = {
        "zstd-layer": cmd_zstd_layer, "config-set": cmd_config_set, "make-index": cmd_make_index, "digest": cmd_digest,
        "config-digest": cmd_config_digest, "verify": cmd_verify,
        "same-content": cmd_same_content, "identical": cmd_identical,
        "docker-save": cmd_docker_save,
    }
    fn = cmds.get(argv[1])
    if not fn:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        fn(*argv[2:])
    except CheckError as e:
        print(f"ocitool {argv[1]}: FAILED: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, IndexError, tarfile.TarError,
            subprocess.CalledProcessError) as e:
        print(f"ocitool {argv[1]}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except TypeError as e:
        print(f"ocitool {argv[1]}: bad arguments: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
