// Records a hash of the front end's sources in the built extension, so a test can
// tell committed assets that lag their sources (see tests/test_jupyter_extension.py).
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const files = ['package.json', 'tsconfig.json'];
for (const dir of ['src', 'style']) {
  for (const f of fs.readdirSync(path.join(__dirname, dir)).sort()) {
    files.push(path.join(dir, f));
  }
}
const hash = crypto.createHash('sha256');
for (const f of files) {
  hash.update(f + '\0');
  hash.update(fs.readFileSync(path.join(__dirname, f)).toString().replace(/\r\n/g, '\n'));
  hash.update('\0');
}
const out = path.join(__dirname, '..', 'src', 'durabook', 'labextension', 'sources.sha256');
fs.writeFileSync(out, hash.digest('hex') + '\n');
console.log('stamped', out);
