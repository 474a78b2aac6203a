"""The fix for each cause the doctor can name, by its stable code. Concrete: the setting to change and
where, for the servers and proxies that cause these the most."""

from __future__ import annotations

COMPRESSION = (
    "Do not compress event streams. webpack-dev-server: `devServer: { compress: false }`. Next.js pages routes "
    "(`pages/api`): `compress: false` in next.config.js. Express/Connect `compression` middleware: pass "
    "`filter: (req, res) => !String(res.getHeader('Content-Type')).startsWith('text/event-stream') && "
    "compression.filter(req, res)`, "
    "or call `res.flush()` after each event. All three skip a response marked `Cache-Control: no-transform`, so "
    "sending `Cache-Control: no-cache, no-transform` from the stream's handler fixes it too. Or put sseproxy in "
    "front: it asks local upstreams for `Accept-Encoding: identity`, so the stream is never compressed."
)

FIXES = {
    "compression": COMPRESSION,
    "content_encoding": (
        "Send event streams uncompressed (webpack-dev-server `compress: false`, Next.js `compress: false`, a "
        "`filter` for the `compression` middleware), or mark them `Cache-Control: no-cache, no-transform`; "
        "sseproxy in front asks local upstreams for identity and never compresses a stream."
    ),
    "content_length": (
        "Do not set Content-Length on a stream: write each event and flush it, letting HTTP/1.1 send the body "
        "chunked (Node: `res.write()` per event with no length; Python: a generator or StreamingResponse; "
        "Go: `http.Flusher`). A framework or proxy that adds a length has buffered the whole body to count it."
    ),
    "buffering_intermediary": (
        "Find the hop that buffers. nginx: `proxy_buffering off;` (and `gzip off;`) in that location, or have the "
        "server send `X-Accel-Buffering: no` (sseproxy sends it on every stream); Apache mod_proxy: "
        "`flushpackets=on`; a CDN or load balancer: turn off response buffering for this path. Or point the "
        "client at sseproxy, which writes each event the moment it arrives. If nothing sits in between, the "
        "server's own framework buffers: flush after each event."
    ),
    "no_transform_missing": (
        "Send `Cache-Control: no-cache, no-transform` with the stream: the `compression` middleware (and so "
        "webpack-dev-server and Next.js) and well-behaved proxies and CDNs then leave it alone. sseproxy adds it "
        "to every stream it relays."
    ),
    "truncated": (
        "The server (or a hop) closed the connection mid-stream: check its logs and idle timeouts (nginx "
        "`proxy_read_timeout`, a load balancer's idle timeout); send a comment line such as `: keep-alive` every "
        "15 s or so to keep an idle stream open."
    ),
    "few_events": "Run it while the stream is busier, or with a longer --timeout, to see how events are paced.",
    "not_a_stream": (
        "If this URL should stream, send `Content-Type: text/event-stream` (or application/x-ndjson) and write "
        "each event as it is produced: EventSource refuses other types, and proxies treat them as ordinary "
        "bodies they may buffer or compress. If the API streams only when asked, ask: e.g. `\"stream\": true` in "
        "an LLM API's JSON body (-d), or the Accept header it expects (-H)."
    ),
    "no_events": (
        "Make the server send an event while the doctor listens (or raise --timeout); a stream that is silent "
        "for long should send a comment line such as `: keep-alive` every 15 s or so."
    ),
    "connect_failed": "Check the URL, and that the server is running and listening on that address and port.",
    "timeout": "The server did not answer in time: check it is up and not stuck, or raise --timeout.",
    "bad_response": (
        "Check the URL's scheme and port: the doctor speaks HTTP/1.1, over TLS for https:// URLs (an https "
        "server on an http:// URL, or the reverse, looks like this)."
    ),
    "decode_failed": (
        "The body's Content-Encoding could not be decoded, so its events could not be counted: send event "
        "streams uncompressed."
    ),
    "redirect": (
        "Run the doctor on the Location URL: EventSource follows redirects, the doctor does not, so that each "
        "hop can be measured on its own."
    ),
    "http_error": (
        "Give the request what the endpoint needs: -X for the method, -H for headers (e.g. -H 'Authorization: "
        "Bearer …'), -d for the body."
    ),
}
