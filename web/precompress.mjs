// The build's text files (sira/http/ui) also compressed beside them, gzip and Brotli (x.js.gz, x.js.br): SIRA
// serves one of those to a browser that accepts it (sira/http/ui.py), compressed once here, never per request.
// Usage: node precompress.mjs DIR (`npm run build` runs it on the build).
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const TEXT = /\.(js|css|html|svg|json|txt)$/;
const SMALL = 1024; // under a kilobyte compression saves less than the headers it costs

function* files(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* files(path);
    else if (TEXT.test(entry.name)) yield path;
  }
}

const dir = process.argv[2];
if (!dir) throw new Error("usage: node precompress.mjs DIR");
let raw = 0;
let gzipped = 0;
for (const path of files(dir)) {
  const body = readFileSync(path);
  if (body.length < SMALL) continue;
  const gz = gzipSync(body, { level: 9 });
  writeFileSync(`${path}.gz`, gz);
  writeFileSync(`${path}.br`, brotliCompressSync(body, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }));
  raw += body.length;
  gzipped += gz.length;
}
console.log(`precompressed ${(raw / 1024).toFixed(0)} KB of text to ${(gzipped / 1024).toFixed(0)} KB gzip`);
