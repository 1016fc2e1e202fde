# A static-file HTTP server: ip port root. Not `python3 -m http.server`: that one looks up
# its own name in DNS at start, which sends a query toward the host's resolver.
import functools, http.server, socketserver, sys
ip, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
socketserver.TCPServer.allow_reuse_address = True
with socketserver.ThreadingTCPServer((ip, port), handler) as server:
    server.serve_forever()
