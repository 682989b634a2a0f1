// Starts Unleash 6 for the rollback tests, configured by scripts/lib/servers.sh
// through RB_UNLEASH_* variables. Listens on 127.0.0.1 only; version check and
// telemetry are off (CHECK_VERSION/SEND_TELEMETRY/DO_NOT_TRACK/SCARF_ANALYTICS are set
// by the caller too).
'use strict';

const env = (name) => {
  const v = process.env[name];
  if (v === undefined || v === '') {
    console.error(`unleash-server.js: ${name} is not set`);
    process.exit(2);
  }
  return v;
};

const unleash = require(env('RB_UNLEASH_MODULE'));
const url = new URL(env('RB_UNLEASH_DB_URL'));

unleash
  .start({
    db: {
      host: url.hostname,
      port: Number(url.port || 5432),
      user: decodeURIComponent(url.username || 'postgres'),
      password: decodeURIComponent(url.password || ''),
      database: decodeURIComponent(url.pathname.replace(/^\//, '')),
      ssl: false,
    },
    server: { host: '127.0.0.1', port: Number(env('RB_UNLEASH_PORT')) },
    logLevel: 'warn',
    versionCheck: { enable: false },
    telemetry: false,
    authentication: {
      initApiTokens: [
        {
          environment: '*',
          project: '*',
          secret: env('RB_UNLEASH_ADMIN_TOKEN'),
          type: 'admin',
          tokenName: 'admin',
        },
        {
          environment: 'development',
          project: '*',
          secret: env('RB_UNLEASH_CLIENT_TOKEN'),
          type: 'client',
          tokenName: 'client',
        },
      ],
    },
  })
  .catch((err) => {
    console.error('unleash-server.js: start failed:', err);
    process.exit(1);
  });

const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
