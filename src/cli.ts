/** The moe-router command line. */
import { integerFlag, parseFlags } from './args';
import { BENCH_USAGE, runBenchCommand } from './bench';
import { cardCommand, validateCommand } from './config';
import { runDemo } from './demo';
import { RouterError } from './errors';
import { runServe } from './server';
import { version } from '../package.json';

const USAGE = `Usage: moe-router <command> [options]

Commands:
  demo [--tokens N] [--backend NAME]   route a built-in OLMoE-shaped batch and show expert usage
  serve [--port 8080] [--host 127.0.0.1] [--config router.json] [--api-key KEY] [--rate-limit N]
                                       HTTP: POST /route, GET /metrics, /health, /ready
                                       (--rate-limit: requests per minute per client)
  card [--config router.json]          print the model card
  validate --config router.json        check a config and say what is wrong
  bench [options]                      time routing on the canonical workloads (see below)
  version                              the package's version
  help                                 this text

${BENCH_USAGE}`;

const COMMANDS: readonly string[] = ['demo', 'bench', 'serve', 'card', 'validate'];

function main(argv: string[]): number | Promise<number> {
  const [command, ...args] = argv;
  // Every command's --help prints the usage (bench's own) and succeeds.
  if (COMMANDS.includes(command!) && (args.includes('--help') || args.includes('-h'))) {
    process.stdout.write(command === 'bench' ? BENCH_USAGE : USAGE);
    return 0;
  }
  switch (command) {
    case 'demo': {
      const flags = parseFlags(args, { tokens: { type: 'string' }, backend: { type: 'string' } }, USAGE);
      // (The router checks the backend's name, as it checks any option.)
      runDemo({ tokens: integerFlag('tokens', flags.tokens, 1), backend: flags.backend as never });
      return 0;
    }
    case 'bench':
      return runBenchCommand(args);
    case 'serve': {
      const flags = parseFlags(
        args,
        {
          port: { type: 'string' },
          host: { type: 'string' },
          config: { type: 'string' },
          'api-key': { type: 'string' },
          'rate-limit': { type: 'string' },
        },
        USAGE,
      );
      return runServe({ port: flags.port, host: flags.host, config: flags.config, apiKey: flags['api-key'], rateLimit: flags['rate-limit'] });
    }
    case 'card':
      process.stdout.write(cardCommand(parseFlags(args, { config: { type: 'string' } }, USAGE).config));
      return 0;
    case 'validate':
      return validateCommand(parseFlags(args, { config: { type: 'string' } }, USAGE).config);
    case 'version':
    case '--version':
    case '-v':
      process.stdout.write(`${version}\n`);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return command === undefined ? 1 : 0;
    default:
      process.stderr.write(`moe-router: unknown command '${command}'\n\n${USAGE}`);
      return 1;
  }
}

Promise.resolve()
  .then(() => main(process.argv.slice(2)))
  .then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      if (!(error instanceof RouterError)) throw error;
      process.stderr.write(`moe-router: ${error.code}: ${error.message}\n`);
      process.exitCode = 1;
    },
  );
