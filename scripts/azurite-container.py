#!/usr/bin/env python3
"""Create a blob container on an Azurite emulator (stdlib only: SharedKey
signing with Azurite's well-known devstoreaccount1 key).
Usage: scripts/azurite-container.py PORT CONTAINER"""
import base64, hashlib, hmac, http.client, sys
from email.utils import formatdate

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

def main():
    port, container = int(sys.argv[1]), sys.argv[2]
    date = formatdate(usegmt=True)
    version = "2021-08-06"
    path = f"/{ACCOUNT}/{container}"
    canon_headers = f"x-ms-date:{date}\nx-ms-version:{version}\n"
    canon_resource = f"/{ACCOUNT}{path}\nrestype:container"
    # Content-Length is empty when 0 (versions from 2015-02-21 on).
    to_sign = "PUT" + "\n" * 12 + canon_headers + canon_resource
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), to_sign.encode(), hashlib.sha256).digest()).decode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("PUT", path + "?restype=container", body=b"", headers={
        "x-ms-date": date, "x-ms-version": version, "Content-Length": "0",
        "Authorization": f"SharedKey {ACCOUNT}:{sig}"})
    r = c.getresponse()
    body = r.read()
    if r.status not in (201, 409):
        sys.exit(f"creating container {container}: HTTP {r.status} {body[:300]!r}")

main()
