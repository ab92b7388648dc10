// SPDX-License-Identifier: Apache-2.0
// Smoke test of the unmodified E2B JS SDK: run a command, write and read a file,
// list a directory and watch it. Runs either with E2B_DEBUG=true (the SDK then talks
// to envd on localhost:49983) or against `hearth serve` (E2B_API_URL,
// E2B_SANDBOX_URL, E2B_API_KEY), where it also checks that kill ends the sandbox;
// tests/compat/test_js_smoke.py runs it.
import assert from 'node:assert/strict'
import { Sandbox } from 'e2b'

const sandbox = await Sandbox.create()

const result = await sandbox.commands.run('echo "hello from $(whoami)"')
assert.equal(result.exitCode, 0)
assert.equal(result.stdout, 'hello from user\n')

let streamed = ''
await sandbox.commands.run('for i in 1 2 3; do echo $i; done', {
  onStdout: (data) => { streamed += data },
})
assert.equal(streamed, '1\n2\n3\n')

const path = `/home/user/js-smoke-${process.pid}.txt`
const info = await sandbox.files.write(path, 'written by js ✓')
assert.equal(info.path, path)
assert.equal(await sandbox.files.read(path), 'written by js ✓')
assert.equal(await sandbox.files.exists(path), true)

const entries = await sandbox.files.list('/home/user')
assert.ok(entries.some((e) => e.path === path))

// WatchDir is a server stream in JS (start event first, then events).
const dir = `/home/user/js-watch-${process.pid}`
await sandbox.files.makeDir(dir)
const seen = []
const watcher = await sandbox.files.watchDir(dir, (event) => { seen.push(event) })
await sandbox.files.write(`${dir}/w.txt`, 'x')
for (let i = 0; i < 100 && !seen.some((e) => e.name === 'w.txt' && e.type === 'write'); i++) {
  await new Promise((r) => setTimeout(r, 50))
}
await watcher.stop()
assert.ok(seen.some((e) => e.name === 'w.txt' && e.type === 'write'), JSON.stringify(seen))

await sandbox.files.remove(path)
assert.equal(await sandbox.files.exists(path), false)

if (process.env.E2B_DEBUG !== 'true') {
  assert.equal(await sandbox.isRunning(), true)
  assert.equal(await sandbox.kill(), true)
  assert.equal(await sandbox.isRunning(), false)
}
console.log('js smoke: ok')
