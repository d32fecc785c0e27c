// What both browser scripts need: headless Chromium (Debian's, with fake camera and
// microphone) and pages, each in its own context, that have loaded livekit-client from a
// local HTTP server. Page errors are forwarded to stderr.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const here = path.dirname(new URL(import.meta.url).pathname);

/** Opens `count` pages; `close()` ends the browser and the HTTP server. */
export async function openPages(count) {
  const lib = fs.readFileSync(
    path.join(here, 'node_modules/livekit-client/dist/livekit-client.umd.js'));
  const page = '<!doctype html><html><body><script src="/livekit-client.js"></script></body></html>';
  const server = http.createServer((request, response) => {
    if (request.url === '/livekit-client.js') {
      response.writeHead(200, { 'content-type': 'text/javascript' });
      response.end(lib);
    } else {
      response.writeHead(200, { 'content-type': 'text/html' });
      response.end(page);
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}/`;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const close = async () => {
    await browser.close();
    server.close();
  };
  try {
    const pages = [];
    for (let i = 0; i < count; i++) {
      const p = await (await browser.newContext()).newPage();
      p.on('console', (m) => { if (m.type() === 'error') console.error(`[page] ${m.text()}`); });
      await p.goto(base);
      pages.push(p);
    }
    return { pages, close };
  } catch (error) {
    await close();
    throw error;
  }
}
