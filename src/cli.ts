/** The moe-router command line. */
import { runDemo } from './demo';
import { RouterError } from './errors';

const USAGE = `Usage: moe-router <command> [options]

Commands:
  demo [--tokens N] [--backend NAME]   route a built-in OLMoE-shaped batch and show expert usage
  help                                 this text
`;

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

function main(argv: string[]): number {
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

try {
  process.exitCode = main(process.argv.slice(2));
} catch (error) {
  if (error instanceof RouterError) {
    process.stderr.write(`moe-router: ${error.code}: ${error.message}\n`);
    process.exitCode = 1;
  } else {
    throw error;
  }
}
