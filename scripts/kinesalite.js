// Starts kinesalite (a Kinesis emulator) bound to 127.0.0.1 only: its own CLI has no host flag.
const kinesalite = require('kinesalite');
const port = Number(process.argv[2] || 4567);
const server = kinesalite({ createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100 });
server.listen(port, '127.0.0.1', (err) => {
  if (err) { console.error(err); process.exit(1); }
  console.log(`kinesalite listening on 127.0.0.1:${port}`);
});
