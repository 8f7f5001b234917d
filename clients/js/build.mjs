// Builds dist/cartstream.mjs (ES module) and dist/cartstream.min.js (one global,
// `cartstream`, the script cartstream serves at /sdk/v1/cartstream.min.js), and prints the
// script's size minified and gzipped (goal: at most 6 KB).
// --check: builds into a temporary directory instead and fails if the result differs from
// the committed dist/ (the source changed and dist/ was not rebuilt, or the other way round).
// --tests: only bundles test/*.test.ts into test-out/ for `node --test` (dist/ untouched, so a
// test run never makes a stale dist/ look fresh).
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

process.chdir(new URL(".", import.meta.url).pathname);
if (process.argv.includes("--tests")) {
  rmSync("test-out", { recursive: true, force: true });
  const tests = readdirSync("test").filter((f) => f.endsWith(".test.ts"));
  await build({
    entryPoints: tests.map((f) => "test/" + f),
    bundle: true,
    platform: "node",
    format: "esm",
    outdir: "test-out",
    outExtension: { ".js": ".mjs" },
    packages: "external",
    logLevel: "warning",
  });
  process.exit(0);
}
const check = process.argv.includes("--check");
const dir = check ? mkdtempSync(join(tmpdir(), "cartstream-sdk-")) : "dist";
const files = ["cartstream.mjs", "cartstream.min.js"];
const common = { entryPoints: ["src/index.ts"], bundle: true, target: "es2019", legalComments: "none", logLevel: "warning" };
await build({ ...common, format: "esm", outfile: join(dir, files[0]) });
await build({ ...common, format: "iife", globalName: "cartstream", minify: true, outfile: join(dir, files[1]) });

if (check) {
  const stale = files.filter((f) => !readFileSync(join(dir, f)).equals(readFileSync(join("dist", f))));
  rmSync(dir, { recursive: true, force: true });
  if (stale.length) {
    console.error(`clients/js/dist differs from a build of clients/js/src: ${stale.join(", ")}; run \`npm run build\` in clients/js and commit dist/`);
    process.exit(1);
  }
  console.log("clients/js/dist is the build of clients/js/src");
}

const min = readFileSync(join("dist", files[1]));
const gz = gzipSync(min, { level: 9 }).length;
const GOAL = 6 * 1024;
console.log(`dist/cartstream.min.js: ${min.length} bytes minified, ${gz} bytes gzipped (goal ${GOAL})`);
if (gz > GOAL) {
  console.error("the bundle is over its size goal");
  process.exit(1);
}

