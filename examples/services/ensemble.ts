/**
 * A three-service ensemble (see docs/services.md):
 *
 *   db     PostgreSQL from Debian's package, in an image built as a stage
 *          (debootstrap + postgresql); ready when `SELECT 1` answers.
 *   app    seeds a row once per new container and records its id in the
 *          ensemble's context as user_id.
 *   worker reads {user_id} from its env and looks the row up by hostname.
 *
 *   cairn services start examples/services/ensemble.ts
 *   cairn services status examples/services/ensemble.ts
 *   cairn services stop examples/services/ensemble.ts
 *   cairn services down examples/services/ensemble.ts            # keeps the database's volume
 *   cairn services down examples/services/ensemble.ts --volumes  # and removes it
 *
 * The project is `services-demo` (directory + ensemble name); `-p NAME` runs another copy.
 */
import { debootstrap, dockerImage, ensemble, type ServiceHandle } from 'cairn';

const rootfs = debootstrap({ name: 'debian-pg', install: ['postgresql', 'procps'] });
const image = dockerImage({ rootfs, name: 'debian-pg' });

const PG = '/usr/lib/postgresql/15/bin/postgres';
const psql = (h: ServiceHandle, sql: string, host = '') =>
  h.exec([
    'runuser',
    '-u',
    'postgres',
    '--',
    'psql',
    ...(host ? ['-h', host] : []),
    '-v',
    'ON_ERROR_STOP=1',
    '-qtAc',
    sql,
  ]);

export default ensemble({
  name: 'demo',
  services: [
    {
      name: 'db',
      image,
      // Trust the ensemble's network, listen on it, and run as postgres.
      command: [
        'sh',
        '-c',
        [
          'mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql',
          "grep -q '0.0.0.0/0' /etc/postgresql/15/main/pg_hba.conf || echo 'host " +
            "all all 0.0.0.0/0 trust' >> /etc/postgresql/15/main/pg_hba.conf",
          `exec setpriv --reuid=postgres --regid=postgres --init-groups ${PG} -D /var/lib/postgresql/15/main -c ` +
            `config_file=/etc/postgresql/15/main/postgresql.conf -c listen_addresses='*'`,
        ].join(' && '),
      ],
      ports: { '5432': 15432 },
      // The data directory outlives containers (reload, rebuilt images) until `down --volumes`.
      volumes: { data: '/var/lib/postgresql/15/main' },
      stopSignal: 'SIGINT', // fast shutdown; SIGTERM waits for clients
      ping: async (h) => (await psql(h, 'SELECT 1')).stdout.trim() === '1',
    },
    {
      name: 'app',
      image,
      dependsOn: ['db'],
      command: ['sleep', 'infinity'],
      ping: async (h) => (await psql(h, 'SELECT 1', 'db')).exitCode === 0,
      postStartInit: async (h) => {
        const r = await psql(
          h,
          'CREATE TABLE IF NOT EXISTS users (id serial PRIMARY KEY, name ' +
            "text); INSERT INTO users (name) VALUES ('alice') RETURNING id",
          'db',
        );
        if (r.exitCode !== 0) throw new Error(`seeding failed: ${r.stderr}`);
        h.context.set('user_id', r.stdout.trim());
      },
    },
    {
      name: 'worker',
      image,
      dependsOn: ['app'],
      env: { USER_ID: '{user_id}' },
      command: [
        'sh',
        '-c',
        'runuser -u postgres -- psql -h db -tAc "SELECT name FROM users WHERE id = $USER_ID" > /tmp/name; echo ' +
          '"worker sees $(cat /tmp/name)"; exec sleep infinity',
      ],
      ping: async (h) => (await h.exec('test -s /tmp/name')).exitCode === 0,
    },
  ],
});
