// Checks the AsyncAPI document of the WebSocket channel, and optionally a captured session
// against it:
//
//   node scripts/asyncapi/check.mjs asyncapi/asyncapi.json [SESSION.json]
//
// 1. The document is parsed and validated by the AsyncAPI parser (@asyncapi/parser, the
//    reference implementation: the AsyncAPI JSON schema, references, and its ruleset). Any
//    diagnostic of severity error or warning fails; information and hints are printed. Then
//    every message example is validated against its message's payload schema (the parser's
//    ruleset does that for AsyncAPI 2 only).
// 2. With a session (written by `cargo test --test api asyncapi::`, from a real server), every
//    message the server sent is validated against the payload schema of the document's
//    message of its `type`, strictly: a field the schema does not name fails too. Every
//    reply must be one the document lists for the operation of the message it answers. The
//    client messages the session sent as valid must validate; those it sent as invalid (that
//    the server refused) must not. Every close code the server used must be documented, with
//    the reason it sent (none when it answers the client's own close frame).
//
// Exit status 0 when everything holds, 1 otherwise (each failure printed).

import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import { readFileSync } from 'node:fs';

const [documentPath, sessionPath] = process.argv.slice(2);
if (!documentPath) {
    console.error('usage: node check.mjs ASYNCAPI.json [SESSION.json]');
    process.exit(2);
}

const failures = [];
const fail = (what) => failures.push(what);

const text = readFileSync(documentPath, 'utf8');
const { document, diagnostics } = await new Parser().parse(text, { source: documentPath });
const severityName = ['error', 'warning', 'information', 'hint'];
for (const d of diagnostics) {
    const line = `${severityName[d.severity]} ${d.code}: ${d.message} at ${d.path.join('.') || '(root)'}`;
    if (d.severity === DiagnosticSeverity.Error || d.severity === DiagnosticSeverity.Warning) {
        fail(line);
    } else {
        console.log(`  (${line})`);
    }
}
if (!document) {
    fail(`${documentPath}: the parser produced no document`);
    finish();
}
console.log(
    `${documentPath}: AsyncAPI ${document.version()}, ${document.messages().length} messages, ` +
        `${document.operations().length} operations, ${diagnostics.length} diagnostics`,
);

checkExamples();
if (sessionPath) {
    checkSession(JSON.parse(readFileSync(sessionPath, 'utf8')));
}
finish();

function finish() {
    if (failures.length > 0) {
        console.error(`FAILED: ${failures.length} problem(s)`);
        for (const f of failures) console.error(`  - ${f}`);
        process.exit(1);
    }
    console.log('ok');
    process.exit(0);
}

/** The document's messages by the `type` their payload fixes, and the operations. */
function model() {
    const byType = new Map();
    for (const message of document.messages().all()) {
        const payload = message.payload()?.json();
        const type = payload?.properties?.type?.const;
        if (typeof type !== 'string') {
            fail(`message ${message.id()} has no payload property "type" with a const`);
            continue;
        }
        byType.set(type, { id: message.id(), payload });
    }
    const operations = document.operations().all().map((op) => ({
        id: op.id(),
        action: op.action(),
        messages: op.messages().all().map((m) => m.id()),
        replies: op.reply()?.messages().all().map((m) => m.id()) ?? [],
    }));
    return { byType, operations };
}

function checkExamples() {
    const check = validator();
    let count = 0;
    for (const message of document.messages().all()) {
        const payload = message.payload()?.json();
        for (const [i, example] of message.examples().all().entries()) {
            count += 1;
            const problem = check(payload, example.payload(), false);
            if (problem) fail(`message ${message.id()}, example ${example.name() ?? i}: ${problem}`);
        }
    }
    if (count === 0) fail('the document has no message examples');
    console.log(`${count} message examples checked against their schemas`);
}

function validator() {
    // The schemas are draft-07 with OpenAPI's `example` and `format`s of poem-openapi
    // (uint32, int64, double); the parser adds `x-parser-*` keys to them.
    const ajv = new Ajv({ strict: false, allErrors: true });
    addFormats(ajv);
    const integer = (min, max) => ({
        type: 'number',
        validate: (n) => Number.isInteger(n) && n >= min && n <= max,
    });
    ajv.addFormat('uint32', integer(0, 2 ** 32 - 1));
    ajv.addFormat('int64', integer(Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER));
    ajv.addFormat('double', { type: 'number', validate: Number.isFinite });
    const cache = new Map();
    return (schema, value, strict) => {
        const key = `${strict}:${JSON.stringify(schema)}`;
        let validate = cache.get(key);
        if (!validate) {
            validate = ajv.compile(strict ? closed(schema) : structuredClone(schema));
            cache.set(key, validate);
        }
        return validate(value) ? null : ajv.errorsText(validate.errors, { separator: '; ' });
    };
}

/** A copy of `schema` where every object schema that names its properties (outside
 * composition keywords) allows no others: what the server sends must all be documented. */
function closed(schema) {
    const copy = structuredClone(schema);
    const walk = (s) => {
        if (!s || typeof s !== 'object') return;
        if (s.properties && !('additionalProperties' in s)) s.additionalProperties = false;
        for (const p of Object.values(s.properties ?? {})) walk(p);
        if (s.items) walk(s.items);
    };
    walk(copy);
    return copy;
}

function checkSession(session) {
    const { byType, operations } = model();
    const check = validator();
    const channel = document.channels().all()[0]?.json() ?? {};
    const closeCodes = channel['x-cartstream-close-codes'] ?? {};
    const seen = new Set();
    let exchanges = 0;

    const checkServerMessage = (where, message, allowed) => {
        const known = byType.get(message?.type);
        if (!known) return fail(`${where}: the server sent type ${JSON.stringify(message?.type)}, which the document has no message for`);
        seen.add(message.type);
        if (allowed && !allowed.includes(known.id)) {
            fail(`${where}: reply ${known.id} is not among the documented replies [${allowed.join(', ')}]`);
        }
        const problem = check(known.payload, message, true);
        if (problem) fail(`${where}: ${message.type} does not match its schema: ${problem}\n      ${JSON.stringify(message)}`);
    };

    for (const conversation of session.sessions ?? []) {
        for (const [i, ex] of (conversation.exchanges ?? []).entries()) {
            exchanges += 1;
            const where = `${conversation.name}[${i}]${ex.note ? ` (${ex.note})` : ''}`;
            let allowed = null;
            if (ex.expect === 'closes') {
                if (ex.reply) fail(`${where}: a reply where the server should have closed`);
                if (!ex.close) fail(`${where}: the server did not close`);
            } else if (ex.send !== undefined && ex.send !== null) {
                const sent = ex.send;
                const known = typeof sent === 'object' && !Array.isArray(sent) ? byType.get(sent.type) : undefined;
                if (ex.expect === 'unparseable') {
                    if (known) fail(`${where}: sent as no message, but the document has a message of type ${sent.type}`);
                    allowed = operations.filter((o) => o.action === 'send' && o.messages.includes('error')).flatMap((o) => o.messages);
                } else if (!known) {
                    fail(`${where}: the document has no message of type ${JSON.stringify(sent?.type)}`);
                } else {
                    const problem = check(known.payload, sent, false);
                    if (ex.expect === 'valid' && problem) fail(`${where}: a message the server processed fails its schema: ${problem}`);
                    if (ex.expect === 'invalid' && !problem) fail(`${where}: the server refused this ${sent.type}, but the document's schema allows it`);
                    const op = operations.find((o) => o.action === 'receive' && o.messages.includes(known.id));
                    if (!op) fail(`${where}: no receive operation takes ${known.id}`);
                    allowed = op?.replies ?? [];
                }
            } else if (ex.reply?.type === 'connection_ack') {
                allowed = operations.filter((o) => o.action === 'send').flatMap((o) => o.messages);
            }
            if (ex.reply) checkServerMessage(where, ex.reply, allowed);
            if (ex.close) {
                const documented = closeCodes[String(ex.close.code)];
                if (!documented) fail(`${where}: close code ${ex.close.code} is not in x-cartstream-close-codes`);
                else {
                    // A close that answers the client's own close frame carries no reason.
                    const reason = ex.answersClientClose ? '' : documented.reason;
                    if (reason !== ex.close.reason) {
                        fail(`${where}: close ${ex.close.code} came with reason ${JSON.stringify(ex.close.reason)}, documented ${JSON.stringify(reason)}`);
                    }
                }
            }
        }
    }
    if (exchanges === 0) fail(`${sessionPath}: no exchanges`);
    console.log(`${sessionPath}: ${exchanges} exchanges; server message types seen: ${[...seen].sort().join(', ')}`);
}
