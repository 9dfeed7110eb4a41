// An HTTP/2 server over TLS (HTTP/1.1 allowed too, by ALPN) for tests/net/http_client_test.cpp.
//   node h2_server.mjs CERT_PEM KEY_PEM PORT
// Listens on 127.0.0.1:PORT until killed. Every request is answered after ?delay_ms=N
// (default 0) with 200 and headers saying how it was served: x-http-version (2.0 or 1.1),
// x-connection (which TLS connection, numbered from 1) and x-connections (how many so far).
import fs from 'node:fs';
import http2 from 'node:http2';

const [cert, key, port] = process.argv.slice(2);
let connections = 0;
const server = http2.createSecureServer({
  cert: fs.readFileSync(cert),
  key: fs.readFileSync(key),
  allowHTTP1: true,
  settings: {maxConcurrentStreams: 100},
});
server.on('secureConnection', (socket) => { socket.ninesConnection = ++connections; });
server.on('request', (req, res) => {
  const delay = Number(new URL(req.url, 'https://127.0.0.1').searchParams.get('delay_ms') ?? 0);
  const socket = req.httpVersion === '2.0' ? req.stream.session.socket : req.socket;
  setTimeout(() => {
    res.writeHead(200, {
      'content-type': 'text/plain',
      'x-http-version': req.httpVersion,
      'x-connection': String(socket.ninesConnection ?? 0),
      'x-connections': String(connections),
    });
    res.end(`served over HTTP/${req.httpVersion}\n`);
  }, delay);
});
server.listen(Number(port), '127.0.0.1');
