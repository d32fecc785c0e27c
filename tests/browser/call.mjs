// Two headless Chromium pages with livekit-client (the browser path Element Call takes) join
// a meeting on Sparks' SFU: page A publishes Chromium's fake camera and microphone, page B
// must decode A's video and receive A's audio. Default client options, so the client first
// tries /rtc/v1 and falls back to /rtc on its 404.
//
// Then both resume their sessions after their WebSockets break (the client's own
// 'signal-reconnect' simulation: it closes the socket and resumes with reconnect=1&sid=...):
// B while A mutes its microphone (B must learn of it from what the server kept for it), then
// A (whose client restarts ICE on its publisher connection). Media must go on, nobody must
// leave, B must keep its participant sid (a resume, not a fresh join).
//
// Usage: node call.mjs <ws url of the SFU> <token A> <token B>
// Prints {"framesDecoded": n, "audioPackets": n, "resumed": {...}, ...} and exits 0 when all
// of that held.

import { openPages } from './pages.mjs';

const [url, tokenA, tokenB] = process.argv.slice(2);

const { pages: [receiver, sender], close } = await openPages(2);
let ok = false;
try {
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
    window.room = room;
    window.tracks = tracks;
    return { framesDecoded, audioPackets, from: publisher ? publisher.identity : null };
  }, [url, tokenB]);
  await sender.evaluate(async ([url, token]) => {
    const room = new LivekitClient.Room();
    await room.connect(url, token);
    await room.localParticipant.enableCameraAndMicrophone();
    window.room = room;
    window.left = [];
    room.on(LivekitClient.RoomEvent.ParticipantDisconnected, (p) => window.left.push(p.identity));
  }, [url, tokenA]);
  const result = await received;
  const flowed = result.framesDecoded > 30 && result.audioPackets > 20;

  // A page's session resumes after its WebSocket broke (the socket stays closed for `gap` ms).
  const resume = (p, gap) => p.evaluate(async (gap) => {
    const room = window.room;
    const sid = room.localParticipant.sid;
    const reconnected = new Promise((resolve, reject) => {
      room.once(LivekitClient.RoomEvent.Reconnected, resolve);
      room.once(LivekitClient.RoomEvent.Disconnected, () => reject(new Error('disconnected')));
      setTimeout(() => reject(new Error('not reconnected within 20 s')), 20000);
    });
    await room.simulateScenario('signal-reconnect', gap);
    await reconnected;
    return { sameSid: room.localParticipant.sid === sid };
  }, gap);
  const frames = () => receiver.evaluate(async () => {
    for (const r of (await window.tracks.video.receiver.getStats()).values()) {
      if (r.type === 'inbound-rtp') return r.framesDecoded || 0;
    }
    return 0;
  });
  // Video keeps being decoded: more frames after a while.
  const framesGoOn = async () => {
    const before = await frames();
    await new Promise((resolve) => setTimeout(resolve, 2000));
    return (await frames()) > before + 10;
  };

  const receiverResumed = resume(receiver, 2500);
  await new Promise((resolve) => setTimeout(resolve, 500));
  await sender.evaluate(() => window.room.localParticipant.setMicrophoneEnabled(false));
  const viewer = await receiverResumed;
  const mutedSeen = await receiver.evaluate(async () => {
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const audio = [...window.room.remoteParticipants.values()][0]?.getTrackPublication(
        LivekitClient.Track.Source.Microphone);
      if (audio && audio.isMuted) return true;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return false;
  });
  const afterViewer = await framesGoOn();
  const camera = await resume(sender, 500);
  const afterCamera = await framesGoOn();
  const left = await sender.evaluate(() => window.left);
  result.resumed = { viewer, mutedSeen, afterViewer, camera, afterCamera, left };
  await receiver.evaluate(() => window.room.disconnect());
  console.log(JSON.stringify(result));
  ok = flowed && viewer.sameSid && mutedSeen && afterViewer && camera.sameSid && afterCamera
    && left.length === 0;
} catch (error) {
  console.error(String(error && error.stack || error));
} finally {
  await close();
}
process.exit(ok ? 0 : 1);
