// Builds the component into build/ (committed, shipped in the wheel): node build.mjs
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("build", { recursive: true });
await build({
  entryPoints: ["src/index.js"],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  outfile: "build/scatter.js",
  legalComments: "eof",
  logLevel: "info",
});
copyFileSync("src/index.html", "build/index.html");
