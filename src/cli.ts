/** The moe-router command line. */
import { BENCH_USAGE, runBenchCommand } from './bench';
import { cardCommand, validateCommand } from './config';
import { runDemo } from './demo';
import { RouterError } from './errors';
import { runServe } from './server';

const USAGE = `Usage: moe-router <command> [options]

Commands:
  demo [--tokens N] [--backend NAME]   route a built-in OLMoE-shaped batch and show expert usage
  serve [--port 8080] [--host 127.0.0.1] [--config router.json] [--api-key KEY] [--rate-limit N]
                                       HTTP: POST /route, GET /metrics, /health, /ready
                                       (--rate-limit: requests per minute per client)
  card [--config router.json]          print the model card
  validate --config router.json        check a config and say what is wrong
  bench [options]                      time routing on the canonical workloads (see below)
  help                                 this text

${BENCH_USAGE}`;

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

function main(argv: string[]): number | Promise<number> {
  const [command, ...args] = argv;
  switch (command) {
    case 'demo': {
      const tokens = flag(args, '--tokens');
      runDemo({
        tokens: tokens === undefined ? undefined : Number.parseInt(tokens, 10),
        backend: flag(args, '--backend') as never,
      });
      return 0;
    }
    case 'bench':
      return runBenchCommand(args);
    case 'serve':
      return runServe({
        port: flag(args, '--port'),
        host: flag(args, '--host'),
        config: flag(args, '--config'),
        apiKey: flag(args, '--api-key'),
        rateLimit: flag(args, '--rate-limit'),
      });
    case 'card':
      process.stdout.write(cardCommand(flag(args, '--config')));
      return 0;
    case 'validate':
      return validateCommand(flag(args, '--config'));
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
