"""Print deploy/nginx/berth.conf for a test run: its upstream servers replaced by the given
nodes and its listen address by 127.0.0.1:PORT; every other directive as documented.

usage: nginx-conf.py BERTH_CONF PORT NODE...
"""
import re
import sys

src, port, nodes = sys.argv[1], sys.argv[2], sys.argv[3:]
out, placed = [], False
for line in open(src).read().splitlines():
    m = re.match(r"(\s*)server\s+[0-9.]+:\d+(.*);", line)
    if m:
        if not placed:
            out += [f"{m.group(1)}server {n}{m.group(2)};" for n in nodes]
            placed = True
        continue
    if re.match(r"\s*listen\s+\[::\]:80;", line):
        continue
    out.append(re.sub(r"^(\s*)listen\s+80;", rf"\g<1>listen 127.0.0.1:{port};", line))
if not placed:
    sys.exit(f"no upstream server lines found in {src}")
print("\n".join(out))
