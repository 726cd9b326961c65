#!/usr/bin/env python3
"""A thin front for gcp-storage-emulator (scripts/gcs-server.sh), which
lacks parts of the XML API that object_store's GCS client uses: HEAD and
DELETE are answered through the emulator's JSON API, `list-type=2`
listings are translated to ListBucketResult, PUT and GET answers get
Last-Modified/ETag, and `x-goog-if-generation-match: 0` is enforced
(atomically per object name: check and write under one lock).
Everything else is passed through.
Usage: scripts/gcs-shim.py PORT EMULATOR_PORT; cairn then takes
`-o base_url=http://127.0.0.1:PORT -o bearer_token=test`.
Used by cairn_testkit::gcs::GcsServer (the conformance, fault and CLI
tests on gs://)."""
import http.client, http.server, json, sys, urllib.parse, email.utils, datetime, threading

# One lock per object name: a create-only PUT checks and writes under it, so
# of two racing creates of one name exactly one succeeds (as on GCS).
LOCKS, LOCKS_GUARD = {}, threading.Lock()
def name_lock(key):
    with LOCKS_GUARD:
        return LOCKS.setdefault(key, threading.Lock())

UP = int(sys.argv[2])

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def up(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", UP, timeout=60)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r, r.read()
    def meta(self, bucket, obj):
        r, b = self.up("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(obj, safe='')}")
        return (json.loads(b) if r.status == 200 else None), r.status
    def split(self):
        p = urllib.parse.urlsplit(self.path)
        parts = p.path.lstrip("/").split("/", 1)
        return urllib.parse.unquote(parts[0]), urllib.parse.unquote(parts[1]) if len(parts) > 1 else "", p
    def reply(self, status, headers=None, body=b""):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
    def passthrough(self, body=None):
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        path = self.path
        if not path.startswith("/storage/") and not path.startswith("/upload/"):
            bucket, obj, p = self.split()
            path = "/" + bucket + "/" + urllib.parse.quote(obj, safe="/") + (("?" + p.query) if p.query else "")
        r, b = self.up(self.command, path, body, hdrs)
        out = {k: v for k, v in r.getheaders() if k.lower() not in ("content-length", "transfer-encoding", "connection")}
        if r.status < 300 and not self.path.startswith("/storage/") and "last-modified" not in {k.lower() for k in out}:
            bucket, obj, _ = self.split()
            m, _ = self.meta(bucket, obj)
            if m is not None:
                t = datetime.datetime.fromisoformat(m["updated"].replace("Z", "+00:00"))
                out["Last-Modified"] = email.utils.format_datetime(t, usegmt=True)
                out.setdefault("ETag", '"%s"' % m.get("md5Hash", m["generation"]))
                out["x-goog-generation"] = m["generation"]
        self.reply(r.status, out, b)
    def do_HEAD(self):
        bucket, obj, _ = self.split()
        m, st = self.meta(bucket, obj)
        if m is None:
            return self.reply(404)
        t = datetime.datetime.fromisoformat(m["updated"].replace("Z", "+00:00"))
        self.reply(200, {"Content-Length-X": m["size"], "x-goog-stored-content-length": m["size"],
                         "Last-Modified": email.utils.format_datetime(t, usegmt=True),
                         "ETag": '"%s"' % m.get("md5Hash", m["generation"]), "x-goog-generation": m["generation"]})
    def do_DELETE(self):
        bucket, obj, p = self.split()
        if p.path.startswith("/storage/"):
            return self.passthrough()
        r, b = self.up("DELETE", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(obj, safe='')}")
        self.reply(204 if r.status in (200, 204) else r.status)
    def do_GET(self):
        bucket, obj, p = self.split()
        q = urllib.parse.parse_qs(p.query)
        if not p.path.startswith("/storage/") and obj == "" and q.get("list-type") == ["2"]:
            return self.list_v2(bucket, q)
        self.passthrough()
    def list_v2(self, bucket, q):
        from xml.sax.saxutils import escape
        params = {"prefix": q.get("prefix", [""])[0], "maxResults": q.get("max-keys", ["1000"])[0]}
        if "delimiter" in q: params["delimiter"] = q["delimiter"][0]
        if "continuation-token" in q: params["pageToken"] = q["continuation-token"][0]
        if "start-after" in q: params["startOffset"] = q["start-after"][0] + "\0"
        r, b = self.up("GET", f"/storage/v1/b/{bucket}/o?" + urllib.parse.urlencode(params))
        if r.status != 200:
            return self.reply(r.status, {}, b)
        j = json.loads(b)
        items = j.get("items", [])
        if "start-after" in q:
            items = [i for i in items if i["name"] > q["start-after"][0]]
        x = ['<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>', f"<Name>{escape(bucket)}</Name>",
             f"<Prefix>{escape(params['prefix'])}</Prefix>", f"<KeyCount>{len(items)}</KeyCount>"]
        if j.get("nextPageToken"):
            x.append(f"<IsTruncated>true</IsTruncated><NextContinuationToken>{escape(j['nextPageToken'])}</NextContinuationToken>")
        else:
            x.append("<IsTruncated>false</IsTruncated>")
        for i in items:
            x.append(f"<Contents><Key>{escape(i['name'])}</Key><LastModified>{i['updated']}</LastModified>"
                     f"<ETag>\"{escape(i.get('md5Hash', i['generation']))}\"</ETag><Size>{i['size']}</Size></Contents>")
        for pre in j.get("prefixes", []):
            x.append(f"<CommonPrefixes><Prefix>{escape(pre)}</Prefix></CommonPrefixes>")
        x.append("</ListBucketResult>")
        self.reply(200, {"Content-Type": "application/xml"}, "".join(x).encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.passthrough(self.rfile.read(n))
    def do_PUT(self):
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        bucket, obj, p = self.split()
        with name_lock((bucket, obj)):
            if self.headers.get("x-goog-if-generation-match") == "0" and not p.path.startswith("/storage/"):
                m, _ = self.meta(bucket, obj)
                if m is not None:
                    return self.reply(412, {}, b"<Error><Code>PreconditionFailed</Code></Error>")
            self.passthrough(body)

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
