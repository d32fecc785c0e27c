// A receiver on a congested link, in headless Chromium with livekit-client: page A publishes
// Chromium's fake camera (simulcast) and microphone; page B joins with
// `subscriberAllowPause: true` and receives it through a UDP relay (udp_shaper.py, started
// here) that limits what reaches the browsers. When the link cannot carry even the lowest
// layer, the SFU must pause B's video and tell it (`TrackStreamStateChanged` → paused); when
// the link recovers, resume it (→ active) and frames must be decoded again.
//
// With a seventh argument `single`, A's camera is published without simulcast (one layer,
// as screen shares usually are).
//
// Usage: node congestion.mjs <ws url> <token A> <token B> <relay ip> <udp port> <sfu ip> [single]
// Prints {"states": [...], "framesAfter": n, ...} and exits 0 when all of that held.

import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { openPages } from './pages.mjs';

const [url, tokenA, tokenB, relayIp, udpPort, sfuIp, layers] = process.argv.slice(2);
const here = path.dirname(new URL(import.meta.url).pathname);

// The relay, limited through its stdin ("rate <bits/s>" / "rate none", answered "ok").
const shaper = spawn(process.env.PYTHON || 'python3',
  [path.join(here, '..', 'python', 'udp_shaper.py'), relayIp, udpPort, sfuIp, udpPort],
  { stdio: ['pipe', 'pipe', 'inherit'] });
const shaperLines = readline.createInterface({ input: shaper.stdout })[Symbol.asyncIterator]();
const shaperSays = async () => (await shaperLines.next()).value;
if ((await shaperSays()) !== 'ready') throw new Error('the UDP shaper did not start');
const limit = async (rate) => {
  shaper.stdin.write(`rate ${rate ?? 'none'}\n`);
  if ((await shaperSays()) !== 'ok') throw new Error('the UDP shaper did not take the limit');
};

const { pages: [receiver, sender], close } = await openPages(2);
let ok = false;
const result = {};
try {
  await sender.evaluate(async ([url, token, simulcast]) => {
    const room = new LivekitClient.Room({ publishDefaults: { simulcast } });
    await room.connect(url, token);
    await room.localParticipant.enableCameraAndMicrophone();
    window.room = room;
  }, [url, tokenA, layers !== 'single']);
  result.framesBefore = await receiver.evaluate(async ([url, token]) => {
    // adaptiveStream off: the client would otherwise ask for nothing for a video that is not
    // shown on the page.
    const room = new LivekitClient.Room({ adaptiveStream: false });
    window.states = [];
    room.on(LivekitClient.RoomEvent.TrackStreamStateChanged, (pub, state) => {
      if (pub.kind === 'video') window.states.push(state);
    });
    const video = new Promise((resolve) => {
      room.on(LivekitClient.RoomEvent.TrackSubscribed, (track) => {
        if (track.kind === 'video') resolve(track);
      });
    });
    await room.connect(url, token, { subscriberAllowPause: true });
    window.room = room;
    window.video = await Promise.race([
      video,
      new Promise((_, reject) => setTimeout(() => reject(new Error('no video within 30 s')), 30000)),
    ]);
    window.frames = async () => {
      for (const r of (await window.video.receiver.getStats()).values()) {
        if (r.type === 'inbound-rtp') return r.framesDecoded || 0;
      }
      return 0;
    };
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline && (await window.frames()) < 30) {
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    return window.frames();
  }, [url, tokenB]);

  // Waits until page B has seen stream state `state` (up to `seconds`).
  const seen = (state, seconds) => receiver.evaluate(async ([state, seconds]) => {
    const deadline = Date.now() + seconds * 1000;
    while (Date.now() < deadline) {
      if (window.states.includes(state)) return true;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    return false;
  }, [state, seconds]);

  await limit(60000);
  result.paused = await seen('paused', 40);
  result.statesWhileSlow = await receiver.evaluate(() => [...window.states]);
  await limit(null);
  result.active = await seen('active', 60);
  // Video is decoded again (more than 10 frames within 15 s).
  result.framesAfter = await receiver.evaluate(async () => {
    const resumed = await window.frames();
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline && (await window.frames()) - resumed <= 10) {
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    return (await window.frames()) - resumed;
  });
  result.states = await receiver.evaluate(() => window.states);
  ok = result.framesBefore >= 30 && result.paused && result.active && result.framesAfter > 10;
} catch (error) {
  console.error(String(error && error.stack || error));
} finally {
  console.log(JSON.stringify(result));
  await close();
  shaper.kill();
}
process.exit(ok ? 0 : 1);
