// Drives the simulator's channel management and broadcast ports with @parse/node-apn (a client herald did not
// write) and checks its results. Run by crates/herald-sim/tests/node_apn_broadcast.rs, which passes:
//   SIM_MANAGEMENT_PORT, SIM_BROADCAST_PORT, SIM_CA (PEM path), SIM_P8 (path), SIM_KEY_ID, SIM_TEAM_ID, SIM_BUNDLE
// Prints one JSON line with what it saw; exits non-zero on the first unexpected result.
'use strict';
const fs = require('fs');
const assert = require('assert');
const apn = require('@parse/node-apn');

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

async function main() {
  const bundle = env('SIM_BUNDLE');
  const provider = new apn.Provider({
    token: { key: fs.readFileSync(env('SIM_P8')), keyId: env('SIM_KEY_ID'), teamId: env('SIM_TEAM_ID') },
    production: false,
    address: `localhost:${env('SIM_BROADCAST_PORT')}`,
    port: +env('SIM_BROADCAST_PORT'),
    manageChannelsAddress: `localhost:${env('SIM_MANAGEMENT_PORT')}`,
    manageChannelsPort: +env('SIM_MANAGEMENT_PORT'),
    ca: fs.readFileSync(env('SIM_CA')),
    connectionRetryLimit: 1,
  });
  const seen = {};
  try {
    // Create: node-apn adds "push-type" itself.
    const create = new apn.Notification();
    create.requestId = '0b8e3f3a-5d3c-4c44-9f3e-7f1a2b3c4d5e';
    create.payload = { 'message-storage-policy': 1 };
    let r = await provider.manageChannels(create, bundle, 'create');
    assert.deepStrictEqual(r.failed, [], JSON.stringify(r.failed));
    const channelId = r.sent[0]['apns-channel-id'];
    assert.ok(channelId && /^[A-Za-z0-9+/=]+$/.test(channelId), `channel id ${channelId}`);
    assert.strictEqual(r.sent[0]['apns-request-id'], create.requestId);
    seen.channel = channelId;

    const read = new apn.Notification();
    read.channelId = channelId;
    r = await provider.manageChannels(read, bundle, 'read');
    assert.deepStrictEqual(r.failed, [], JSON.stringify(r.failed));
    assert.strictEqual(r.sent[0]['message-storage-policy'], 1);
    seen.read = r.sent[0]['push-type'];

    r = await provider.manageChannels(new apn.Notification(), bundle, 'readAll');
    assert.deepStrictEqual(r.failed, [], JSON.stringify(r.failed));
    assert.deepStrictEqual(r.sent[0].channels, [channelId]);

    // A Live Activity update to the channel.
    const update = new apn.Notification();
    update.channelId = channelId;
    update.pushType = 'liveactivity';
    update.priority = 5;
    update.expiry = Math.floor(Date.now() / 1000) + 3600;
    update.aps.event = 'update';
    update.aps.timestamp = Math.floor(Date.now() / 1000);
    update.aps['content-state'] = { score: '2-1' };
    r = await provider.broadcast(update, bundle);
    assert.deepStrictEqual(r.failed, [], JSON.stringify(r.failed));
    assert.ok(r.sent[0]['apns-request-id'], 'broadcast answer has apns-request-id');
    seen.broadcast_request_id = r.sent[0]['apns-request-id'];

    // A broadcast may not start an activity.
    const start = new apn.Notification();
    start.channelId = channelId;
    start.pushType = 'liveactivity';
    start.aps.event = 'start';
    start.aps.timestamp = 1;
    start.aps.alert = 'x';
    start.aps['attributes-type'] = 'A';
    start.aps.attributes = {};
    r = await provider.broadcast(start, bundle);
    assert.strictEqual(r.failed.length, 1);
    assert.strictEqual(r.failed[0].status, 400);
    assert.strictEqual(r.failed[0].response.reason, 'BadRequestPayload');

    const del = new apn.Notification();
    del.channelId = channelId;
    r = await provider.manageChannels(del, bundle, 'delete');
    assert.deepStrictEqual(r.failed, [], JSON.stringify(r.failed));

    // The deleted channel is gone: reading it and broadcasting to it fail with ChannelNotRegistered.
    r = await provider.manageChannels(read, bundle, 'read');
    assert.strictEqual(r.failed[0].response.reason, 'ChannelNotRegistered');
    const again = new apn.Notification();
    again.channelId = channelId;
    again.pushType = 'liveactivity';
    again.aps.event = 'end';
    again.aps.timestamp = 2;
    r = await provider.broadcast(again, bundle);
    assert.strictEqual(r.failed[0].status, 400);
    assert.strictEqual(r.failed[0].response.reason, 'ChannelNotRegistered');
    seen.after_delete = r.failed[0].response.reason;
  } finally {
    await provider.shutdown();
  }
  console.log(JSON.stringify(seen));
}

main().catch(e => {
  console.error(e && e.stack ? e.stack : JSON.stringify(e));
  process.exit(1);
});
