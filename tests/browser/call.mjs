// Two headless Chromium pages with livekit-client (the browser path Element Call takes) join
// a meeting on Sparks' SFU: page A publishes Chromium's fake camera and microphone, page B
// must decode A's video and receive A's audio. Default client options, so the client first
// tries /rtc/v1 and falls back to /rtc on its 404.
//
// Usage: node call.mjs <ws url of the SFU> <token A> <token B>
// Prints {"framesDecoded": n, "audioPackets": n, ...} and exits 0 when both flowed.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const [url, tokenA, tokenB] = process.argv.slice(2);
const here = path.dirname(new URL(import.meta.url).pathname);
const lib = fs.readFileSync(path.join(here, 'node_modules/livekit-client/dist/livekit-client.umd.js'));
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

let ok = false;
try {
  const receiver = await (await browser.newContext()).newPage();
  const sender = await (await browser.newContext()).newPage();
  for (const p of [receiver, sender]) {
    p.on('console', (m) => { if (m.type() === 'error') console.error(`[page] ${m.text()}`); });
    await p.goto(base);
  }
  const received = receiver.evaluate(async ([url, token]) => {
    const room = new LivekitClient.Room();
    const tracks = {};
    const both = new Promise((resolve) => {
      room.on(LivekitClient.RoomEvent.TrackSubscribed, (track) => {
        tracks[track.kind] = track;
        if (tracks.video && tracks.audio) resolve();
      });
    });
    await room.connect(url, token);
    await Promise.race([
      both,
      new Promise((_, reject) => setTimeout(() => reject(new Error('no tracks within 30 s')), 30000)),
    ]);
    let framesDecoded = 0;
    let audioPackets = 0;
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      for (const r of (await tracks.video.receiver.getStats()).values()) {
        if (r.type === 'inbound-rtp') framesDecoded = r.framesDecoded || 0;
      }
      for (const r of (await tracks.audio.receiver.getStats()).values()) {
        if (r.type === 'inbound-rtp') audioPackets = r.packetsReceived || 0;
      }
      if (framesDecoded > 30 && audioPackets > 20) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    const publisher = [...room.remoteParticipants.values()][0];
    await room.disconnect();
    return { framesDecoded, audioPackets, from: publisher ? publisher.identity : null };
  }, [url, tokenB]);
  await sender.evaluate(async ([url, token]) => {
    const room = new LivekitClient.Room();
    await room.connect(url, token);
    await room.localParticipant.enableCameraAndMicrophone();
    window.room = room;
  }, [url, tokenA]);
  const result = await received;
  console.log(JSON.stringify(result));
  ok = result.framesDecoded > 30 && result.audioPackets > 20;
} catch (error) {
  console.error(String(error && error.stack || error));
} finally {
  await browser.close();
  server.close();
}
process.exit(ok ? 0 : 1);
