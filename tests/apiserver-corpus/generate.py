#!/usr/bin/env python3
"""Writes the API-server differential corpus: one object per file.

Run from anywhere: `python3 tests/apiserver-corpus/generate.py`. It
rewrites every NNN-*.yaml here. The files are committed so that a run of
`cargo xtask apiserver-diff` needs no generator; this script only keeps
the boundary values (lengths, prefixes, ranges) systematic.

No file records an expected verdict: kube-apiserver decides at run time.
Line 1 of each file says what it probes.
"""

import json
import os
import glob

HERE = os.path.dirname(os.path.abspath(__file__))
NS = "corpus"
cases = []


def scalar(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Raw):
        return v.text
    # A JSON string is a valid YAML double-quoted scalar, and quoting every
    # string keeps YAML 1.1/1.2 differences (yes, 0x10, 1e3) out of the way
    # except where a Raw value probes them on purpose.
    return json.dumps(v, ensure_ascii=False)


class Raw:
    """A scalar written exactly as given (to probe YAML's own typing)."""

    def __init__(self, text):
        self.text = text


def emit(v, indent=0):
    pad = "  " * indent
    out = []
    if isinstance(v, dict):
        if not v:
            return None
        for k, x in v.items():
            key = k if isinstance(k, Raw) else scalar(k) if needs_quote(k) else k
            key = key.text if isinstance(key, Raw) else key
            if isinstance(x, (dict, list)) and x:
                out.append(f"{pad}{key}:")
                out.append(emit(x, indent + 1))
            else:
                out.append(f"{pad}{key}: {flow(x)}")
        return "\n".join(out)
    if isinstance(v, list):
        for x in v:
            if isinstance(x, (dict, list)) and x:
                inner = emit(x, indent + 1)
                out.append(f"{pad}- " + inner.lstrip())
            else:
                out.append(f"{pad}- {flow(x)}")
        return "\n".join(out)
    return pad + scalar(v)


def flow(x):
    if isinstance(x, dict):
        return "{}"
    if isinstance(x, list):
        return "[]"
    return scalar(x)


def needs_quote(k):
    return not all(c.isascii() and (c.isalnum() or c in "-_./") for c in k) or k == ""


def add(slug, probe, obj):
    cases.append((slug, probe, obj))


def np(name="np", namespace=NS, spec=None, metadata=None, **top):
    meta = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if metadata:
        meta.update(metadata)
    obj = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta}
    if spec is not ...:
        obj["spec"] = spec if spec is not None else {"podSelector": {}, "policyTypes": ["Egress"]}
    obj.update(top)
    return obj


def egress(*rules, **spec):
    s = {"podSelector": {}, "policyTypes": ["Egress"], "egress": list(rules)}
    s.update(spec)
    return s


def ipblock(cidr, except_=None):
    b = {"cidr": cidr}
    if except_ is not None:
        b["except"] = except_
    return np(spec=egress({"to": [{"ipBlock": b}]}))


def ports(*entries):
    return np(spec=egress({"ports": list(entries)}))


def ns(name="corpus-ns", labels=None, **meta_extra):
    meta = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    meta.update(meta_extra)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def pod_labels(labels):
    return np(spec={"podSelector": {"matchLabels": labels}, "policyTypes": ["Egress"]})


def expr(*exprs):
    return np(spec={"podSelector": {"matchExpressions": list(exprs)}, "policyTypes": ["Egress"]})


# --- ipBlock.cidr: forms the Go parser of 1.20 may accept or refuse -------
cidrs = [
    ("10.0.0.0/8", "plain IPv4 CIDR"),
    ("0.0.0.0/0", "IPv4 everything"),
    ("1.2.3.4/32", "IPv4 host route"),
    ("10.1.2.3/8", "IPv4 host bits set"),
    ("10.20.0.0/016", "prefix length with a leading zero"),
    ("10.20.0.0/0016", "prefix length with two leading zeros"),
    ("10.0.0.0/08", "prefix 08 (octal-looking)"),
    ("10.0.0.0/00", "prefix 00"),
    ("010.1.2.3/8", "IPv4 octet with a leading zero"),
    ("10.01.2.3/16", "inner IPv4 octet with a leading zero"),
    ("10.0.0.0", "bare IPv4 address, no prefix"),
    ("2001:db8::1", "bare IPv6 address, no prefix"),
    ("10.0.0.0/33", "IPv4 prefix too long"),
    ("10.0.0.0/-1", "negative prefix"),
    ("10.0.0.0/+8", "prefix with a plus sign"),
    ("10.0.0.0/", "empty prefix"),
    ("10.0.0.0//8", "double slash"),
    ("10.0.0.0/8/8", "two prefixes"),
    ("10.0.0/8", "three IPv4 octets"),
    ("10.0.0.0.0/8", "five IPv4 octets"),
    ("10.0.0.256/24", "IPv4 octet over 255"),
    ("0x0a.0.0.0/8", "hex IPv4 octet"),
    ("10.0.0.0/1e1", "prefix in exponent form"),
    (" 10.0.0.0/8", "leading space"),
    ("10.0.0.0/8 ", "trailing space"),
    ("10.0.0.0 /8", "space before slash"),
    ("", "empty cidr"),
    ("any", "a word"),
    ("2001:db8::/32", "plain IPv6 CIDR"),
    ("2001:DB8::/32", "upper-case IPv6"),
    ("2001:db8::1/32", "IPv6 host bits set"),
    ("::/0", "IPv6 everything"),
    ("::1/128", "IPv6 loopback host route"),
    ("2001:db8::/129", "IPv6 prefix too long"),
    ("2001:db8::/032", "IPv6 prefix with a leading zero"),
    ("2001:0db8:0000::/32", "IPv6 groups with leading zeros"),
    ("2001:00db8::/32", "IPv6 group of five digits"),
    ("2001:db8:::/32", "IPv6 triple colon"),
    ("2001:db8::1::/64", "IPv6 two double colons"),
    ("fe80::1%eth0/64", "IPv6 with a zone"),
    ("[2001:db8::]/32", "bracketed IPv6"),
    ("::ffff:10.0.0.0/104", "IPv4-mapped IPv6 range"),
    ("::ffff:1.2.3.4/128", "IPv4-mapped IPv6 host"),
    ("::ffff:1.2.3.4/96", "IPv4-mapped IPv6 /96"),
    ("::1.2.3.4/128", "IPv4-compatible IPv6 host"),
    ("::ffff:010.1.2.3/104", "IPv4-mapped IPv6 with a leading-zero octet"),
    ("1.2.3.4/0", "host bits with prefix 0"),
    ("１0.0.0.0/8", "full-width digit in the address"),
    ("10.0.0.0/８", "full-width digit in the prefix"),
    ("10.0.0.0/8\n", "trailing newline"),
]
for i, (c, why) in enumerate(cidrs):
    add(f"cidr-{i:02d}", f"ipBlock.cidr {c!r}: {why}", ipblock(c))

# --- ipBlock.except -------------------------------------------------------
excepts = [
    ("10.0.0.0/8", ["10.1.0.0/16"], "except strictly inside"),
    ("10.0.0.0/8", ["10.0.0.0/8"], "except equal to cidr"),
    ("10.0.0.0/8", ["11.0.0.0/16"], "except outside cidr"),
    ("10.0.0.0/8", ["10.1.2.3/16"], "except with host bits"),
    ("10.0.0.0/8", ["10.0.0.0/7"], "except wider than cidr"),
    ("10.0.0.0/8", ["10.1.0.0/016"], "except with a leading-zero prefix"),
    ("10.0.0.0/8", ["010.1.0.0/16"], "except with a leading-zero octet"),
    ("10.0.0.0/8", ["10.1.1.1"], "except as a bare address"),
    ("10.0.0.0/8", ["2001:db8::/64"], "IPv6 except in an IPv4 cidr"),
    ("2001:db8::/32", ["2001:db8:1::/48"], "IPv6 except inside"),
    ("2001:db8::/32", ["10.0.0.0/8"], "IPv4 except in an IPv6 cidr"),
    ("10.0.0.0/8", [], "empty except list"),
    ("10.0.0.0/8", None, "no except"),
    ("10.0.0.0/8", ["10.1.0.0/16", "10.1.0.0/16"], "duplicate excepts"),
    ("10.0.0.0/8", ["10.1.0.0/16", "10.1.2.0/24"], "nested excepts"),
    ("10.0.0.0/8", [""], "empty except entry"),
    ("10.1.2.3/8", ["10.1.0.0/16"], "cidr with host bits and an except"),
    ("10.0.0.0/8", ["10.255.255.255/32"], "except a single host"),
    ("::ffff:10.0.0.0/104", ["10.1.0.0/16"], "IPv4 except in an IPv4-mapped cidr"),
    ("10.0.0.0/8", ["::ffff:10.1.0.0/112"], "IPv4-mapped except in an IPv4 cidr"),
    ("0.0.0.0/0", ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"], "everything but RFC 1918"),
]
for i, (c, e, why) in enumerate(excepts):
    add(f"except-{i:02d}", f"ipBlock.except {e!r} in {c!r}: {why}", ipblock(c, e))
add("except-null-entry", "ipBlock.except with a null entry", ipblock("10.0.0.0/8", [None]))
add("ipblock-empty", "ipBlock {} (no cidr)", np(spec=egress({"to": [{"ipBlock": {}}]})))
add("ipblock-null", "ipBlock: null alone in a peer", np(spec=egress({"to": [{"ipBlock": None}]})))
add("ipblock-cidr-number", "ipBlock.cidr as a number", ipblock(Raw("10")))

# --- ports ----------------------------------------------------------------
port_values = [
    (1, "lowest port"), (65535, "highest port"), (0, "port 0"), (65536, "port 65536"),
    (-1, "negative port"), (2147483648, "port over int32"), (Raw("80.0"), "float port"),
    (Raw("0x50"), "hex port (YAML int in 1.1 and 1.2)"), (Raw("0o120"), "YAML 1.2 octal port"),
    (Raw("0120"), "YAML 1.1 octal port"), (Raw("1_000"), "YAML 1.1 underscore int"),
    (Raw("+80"), "port with a plus sign"),
    ("http", "named port"), ("dns-tcp", "named port with a dash"), ("HTTP", "upper-case named port"),
    ("a--b", "named port with a double dash"), ("-http", "named port with a leading dash"),
    ("http-", "named port with a trailing dash"), ("123", "numeric string port"),
    ("1a", "named port starting with a digit"), ("a1", "named port ending with a digit"),
    ("abcdefghijklmno", "15-character named port"), ("abcdefghijklmnop", "16-character named port"),
    ("a_b", "named port with an underscore"), ("a.b", "named port with a dot"),
    ("é", "non-ASCII named port"), (" http", "named port with a space"), ("", "empty named port"),
    ("0", "string zero port"), ("x", "one-letter named port"), ("8-0", "digits and a dash only"),
    (Raw("true"), "boolean port"), (None, "null port"),
]
for i, (p, why) in enumerate(port_values):
    add(f"port-{i:02d}", f"ports[].port {getattr(p, 'text', p)!r}: {why}", ports({"port": p}))
add("port-list", "ports[].port as a list", ports({"port": [80]}))
add("ports-empty-entry", "ports: [{}] (every TCP port)", ports({}))

protocols = ["TCP", "UDP", "SCTP", "tcp", "Tcp", "ICMP", "", " TCP", None, "ALL"]
for i, p in enumerate(protocols):
    add(f"protocol-{i:02d}", f"ports[].protocol {p!r}", ports({"protocol": p, "port": 53}))
add("protocol-only", "ports[] with only protocol UDP", ports({"protocol": "UDP"}))

# endPort does not exist in the 1.20 API.
end_ports = [
    ({"port": 32000, "endPort": 32768}, "a valid range"),
    ({"port": 80, "endPort": 80}, "endPort equal to port"),
    ({"port": 8080, "endPort": 80}, "endPort below port"),
    ({"endPort": 80}, "endPort without port"),
    ({"port": "http", "endPort": 90}, "endPort with a named port"),
    ({"port": 80, "endPort": 70000}, "endPort over 65535"),
    ({"port": 80, "endPort": 0}, "endPort 0"),
    ({"port": 80, "endPort": "90"}, "endPort as a string"),
    ({"port": 80, "endPort": None}, "endPort null"),
    ({"port": 80, "protocol": "UDP", "endPort": 90}, "UDP range"),
]
for i, (entry, why) in enumerate(end_ports):
    add(f"endport-{i:02d}", f"endPort (not in 1.20): {why}", ports(entry))

# --- label keys and values (matchLabels: both are validated) --------------
long_prefix = ".".join(["a" * 63] * 3) + "." + "b" * 61  # 253 characters
label_keys = [
    ("app", "plain key"), ("app.kubernetes.io/name", "prefixed key"),
    ("example.com/app", "domain prefix"), ("Example.com/app", "upper-case prefix"),
    ("a/b/c", "two slashes"), ("/app", "empty prefix"), ("app/", "empty name"),
    ("a" * 63, "63-character name"), ("a" * 64, "64-character name"),
    (long_prefix + "/a", "253-character prefix"), (long_prefix + "b/a", "254-character prefix"),
    ("-app", "leading dash"), ("app-", "trailing dash"), ("a_b", "underscore"),
    ("a.b", "dot in the name"), ("A", "upper-case name"), ("_a", "leading underscore"),
    ("é", "non-ASCII name"), ("a b", "space"), ("", "empty key"),
    ("kubernetes.io/metadata.name", "the namespace-name label"), ("1", "digit name"),
    ("a..b", "double dot in the name"), ("ex_ample.com/app", "underscore in the prefix"),
    ("-example.com/app", "prefix with a leading dash"), ("example.com./app", "prefix ending in a dot"),
    ("EXAMPLE/app", "upper-case single-label prefix"), ("bücher.example/app", "non-ASCII prefix"),
    ("a" * 64 + ".com/app", "prefix label of 64 characters"),
]
for i, (k, why) in enumerate(label_keys):
    add(f"labelkey-{i:02d}", f"matchLabels key {k[:40]!r}: {why}", pod_labels({k: "x"}))

label_values = [
    ("", "empty value"), ("a" * 63, "63 characters"), ("a" * 64, "64 characters"),
    ("-a", "leading dash"), ("a-", "trailing dash"), ("a_b.c-d", "underscore, dot and dash"),
    ("é", "non-ASCII"), ("a b", "space"), ("A", "upper case"), ("1", "digit"),
    ("a/b", "slash"), ("_a", "leading underscore"), ("a.", "trailing dot"),
    ("café", "non-ASCII inside"), ("a\tb", "tab"),
]
for i, (v, why) in enumerate(label_values):
    add(f"labelvalue-{i:02d}", f"matchLabels value {v[:40]!r}: {why}", pod_labels({"app": v}))
add("labelvalue-int", "matchLabels value as a YAML integer", pod_labels({"app": Raw("1")}))
add("labelvalue-bool", "matchLabels value as a YAML boolean", pod_labels({"app": Raw("true")}))
add("labelvalue-null", "matchLabels value null", pod_labels({"app": None}))
add("labelvalue-yes", "matchLabels value `yes` (a boolean in YAML 1.1 only)", pod_labels({"app": Raw("yes")}))

# --- matchExpressions -----------------------------------------------------
exprs = [
    ({"key": "app", "operator": "In", "values": ["a"]}, "In with a value"),
    ({"key": "app", "operator": "NotIn", "values": ["a", "b"]}, "NotIn with values"),
    ({"key": "app", "operator": "Exists"}, "Exists"),
    ({"key": "app", "operator": "DoesNotExist"}, "DoesNotExist"),
    ({"key": "app", "operator": "In", "values": []}, "In with no values"),
    ({"key": "app", "operator": "In"}, "In without values"),
    ({"key": "app", "operator": "In", "values": None}, "In with values null"),
    ({"key": "app", "operator": "Exists", "values": ["a"]}, "Exists with a value"),
    ({"key": "app", "operator": "Exists", "values": []}, "Exists with an empty list"),
    ({"key": "app", "operator": "in", "values": ["a"]}, "lower-case operator"),
    ({"key": "app", "operator": "Gt", "values": ["1"]}, "Gt (node selectors only)"),
    ({"key": "app", "operator": "", "values": ["a"]}, "empty operator"),
    ({"key": "app", "values": ["a"]}, "no operator"),
    ({"key": "", "operator": "Exists"}, "empty key"),
    ({"operator": "Exists"}, "no key"),
    ({"key": "Example.com/app", "operator": "Exists"}, "invalid key prefix"),
    ({"key": "a" * 64, "operator": "Exists"}, "64-character key"),
    ({"key": "app", "operator": "In", "values": ["-bad"]}, "In with an invalid label value"),
    ({"key": "app", "operator": "In", "values": ["a" * 64]}, "In with a 64-character value"),
    ({"key": "app", "operator": "In", "values": ["é"]}, "In with a non-ASCII value"),
    ({"key": "app", "operator": "In", "values": ["a", "a"]}, "In with a duplicate value"),
    ({"key": "app", "operator": "In", "values": [""]}, "In with an empty value"),
    ({"key": "app", "operator": "NotIn", "values": ["a b"]}, "NotIn with a space in a value"),
]
for i, (e, why) in enumerate(exprs):
    add(f"expr-{i:02d}", f"matchExpressions: {why}", expr(e))
add("expr-empty-list", "matchExpressions: []", expr())
add("expr-null", "matchExpressions: null", np(spec={"podSelector": {"matchExpressions": None}, "policyTypes": ["Egress"]}))
add("matchlabels-empty", "matchLabels: {}", pod_labels({}))
add("matchlabels-null", "matchLabels: null", np(spec={"podSelector": {"matchLabels": None}, "policyTypes": ["Egress"]}))

# --- peers ----------------------------------------------------------------
peers = [
    ({}, "empty peer"),
    ({"podSelector": {}}, "podSelector {}"),
    ({"namespaceSelector": {}}, "namespaceSelector {}"),
    ({"namespaceSelector": {}, "podSelector": {}}, "both selectors"),
    ({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}, "ipBlock and podSelector"),
    ({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}, "ipBlock and namespaceSelector"),
    ({"podSelector": None}, "podSelector null alone"),
    ({"namespaceSelector": {"matchLabels": {"Bad/Key": "x"}}}, "namespaceSelector with an invalid key"),
    ({"namespaceSelector": {"matchLabels": {"team": "-x"}}}, "namespaceSelector with an invalid value"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Foo"}]}}, "namespaceSelector with a bad operator"),
    ({"podSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {"matchLabels": {"team": "a"}}}, "pods in selected namespaces"),
]
for i, (p, why) in enumerate(peers):
    add(f"peer-{i:02d}", f"egress[].to[]: {why}", np(spec=egress({"to": [p]})))

# --- empty and null lists, spec shapes ------------------------------------
shapes = [
    (egress(), "egress: [] with policyTypes Egress (deny all)"),
    ({"podSelector": {}, "policyTypes": ["Egress"], "egress": None}, "egress: null"),
    (egress({}), "egress: [{}] (allow all)"),
    (egress({"to": []}), "to: []"),
    (egress({"to": None}), "to: null"),
    (egress({"ports": []}), "ports: []"),
    (egress({"ports": None}), "ports: null"),
    ({"podSelector": {}}, "podSelector only, no policyTypes"),
    ({}, "spec: {}"),
    ({"podSelector": None, "policyTypes": ["Egress"]}, "podSelector: null"),
    ({"policyTypes": ["Egress"]}, "no podSelector"),
    ({"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}, "egress rules without policyTypes"),
    ({"podSelector": {}, "policyTypes": [], "egress": [{"ports": [{"port": 53}]}]}, "policyTypes: [] with egress rules"),
    ({"podSelector": {}, "policyTypes": None}, "policyTypes: null"),
    ({"podSelector": {}, "ingress": []}, "ingress: []"),
    ({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}, "ingress only"),
    ({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{}]}]}, "ingress with an empty peer"),
    ({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 0}]}]}, "ingress with port 0"),
    ({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0"}}]}]}, "ingress with a bare-address ipBlock"),
]
for i, (s, why) in enumerate(shapes):
    add(f"spec-{i:02d}", f"spec shape: {why}", np(spec=s))
add("spec-missing", "NetworkPolicy without spec", np(spec=...))
add("spec-null", "spec: null", np(spec=Raw("null")))

policy_types = [
    (["Egress"], "Egress"), (["Ingress"], "Ingress"), (["Ingress", "Egress"], "both"),
    (["Egress", "Ingress"], "both, reversed"), (["Egress", "Egress"], "Egress twice"),
    (["Ingress", "Egress", "Egress"], "three entries"), (["egress"], "lower case"),
    ([""], "empty string"), (["Both"], "unknown type"), (Raw('"Egress"'), "a string, not a list"),
]
for i, (t, why) in enumerate(policy_types):
    add(f"policytypes-{i:02d}", f"policyTypes: {why}", np(spec={"podSelector": {}, "policyTypes": t}))

# --- names and namespaces -------------------------------------------------
np_names = [
    ("a", "one character"), ("a.b", "dotted (DNS subdomain)"), ("a" * 63, "63 characters"),
    ("a" * 64, "64 characters"), (".".join(["a" * 63] * 4)[:253], "253 characters"),
    (".".join(["a" * 63] * 4)[:253] + "a", "254 characters"), ("A", "upper case"), ("-a", "leading dash"),
    ("a-", "trailing dash"), ("a_b", "underscore"), ("1", "digit"), ("a..b", "double dot"),
    ("café", "non-ASCII"), ("a b", "space"), ("a/b", "slash"), ("a.", "trailing dot"),
]
for i, (n, why) in enumerate(np_names):
    add(f"npname-{i:02d}", f"NetworkPolicy metadata.name: {why}", np(name=n))
add("npname-missing", "NetworkPolicy without metadata.name", np(name=None) if False else
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"namespace": NS}, "spec": {"podSelector": {}}})
add("npname-number", "NetworkPolicy name as a number", np(name=Raw("123")))

np_namespaces = [
    ("a.b", "dotted (a subdomain, not a label)"), ("a" * 63, "63 characters"), ("a" * 64, "64 characters"),
    ("Corpus", "upper case"), ("-a", "leading dash"), ("1abc", "leading digit"), ("a_b", "underscore"),
    ("", "empty (the default namespace)"),
]
for i, (n, why) in enumerate(np_namespaces):
    add(f"npnamespace-{i:02d}", f"NetworkPolicy metadata.namespace: {why}", np(namespace=n))
add("npnamespace-none", "NetworkPolicy without metadata.namespace", np(namespace=None))

ns_names = [
    ("corpus-a", "plain"), ("a", "one character"), ("a.b", "dotted"), ("b" * 63, "63 characters"),
    ("b" * 64, "64 characters"), ("A", "upper case"), ("-a", "leading dash"), ("a-", "trailing dash"),
    ("2abc", "leading digit"), ("a_b", "underscore"), ("é", "non-ASCII"),
]
for i, (n, why) in enumerate(ns_names):
    add(f"nsname-{i:02d}", f"Namespace metadata.name: {why}", ns(n))
ns_labels = [
    ({"team": "a"}, "plain label"), ({"Bad/key": "a"}, "invalid key prefix"), ({"team": "-a"}, "invalid value"),
    ({"team": "a" * 64}, "64-character value"), ({"a" * 64: "x"}, "64-character key"),
    ({"kubernetes.io/metadata.name": "other"}, "the name label, set to another name"),
    ({"team": ""}, "empty value"), ({"équipe": "a"}, "non-ASCII key"), ({"team": "café"}, "non-ASCII value"),
    ({}, "labels: {}"),
]
for i, (l, why) in enumerate(ns_labels):
    add(f"nslabels-{i:02d}", f"Namespace metadata.labels: {why}", ns(labels=l))
add("ns-labels-null", "Namespace labels: null", ns(labels=Raw("null")))
add("ns-namespace-set", "Namespace with metadata.namespace", ns(namespace="corpus"))
add("ns-finalizer-kubernetes", "Namespace spec.finalizers [kubernetes]",
    dict(ns(), spec={"finalizers": ["kubernetes"]}))
add("ns-finalizer-bare", "Namespace spec.finalizers [foo] (not qualified)",
    dict(ns(), spec={"finalizers": ["foo"]}))
add("ns-finalizer-qualified", "Namespace spec.finalizers [example.com/foo]",
    dict(ns(), spec={"finalizers": ["example.com/foo"]}))
add("ns-annotation-bad-key", "Namespace annotation with an invalid key",
    ns(annotations={"Bad/key": "x"}))
add("ns-annotation-any-value", "Namespace annotation with a free-form value",
    ns(annotations={"example.com/note": "any text, even -this- é"}))
add("ns-no-name", "Namespace without metadata.name", {"apiVersion": "v1", "kind": "Namespace", "metadata": {}})
add("ns-no-metadata", "Namespace without metadata", {"apiVersion": "v1", "kind": "Namespace"})
# No generateName-only object: kubectl apply refuses it without naming the
# file, so its verdict could not be attributed in the batch run.

# --- NetworkPolicy metadata besides names ----------------------------------
add("npmeta-labels-ok", "NetworkPolicy metadata.labels valid", np(metadata={"labels": {"team": "a"}}))
add("npmeta-labels-bad-key", "NetworkPolicy metadata.labels invalid key", np(metadata={"labels": {"-team": "a"}}))
add("npmeta-labels-bad-value", "NetworkPolicy metadata.labels invalid value", np(metadata={"labels": {"team": "a b"}}))
add("npmeta-annotations-bad-key", "NetworkPolicy annotation with an invalid key", np(metadata={"annotations": {"a b": "x"}}))
add("npmeta-finalizer-bare", "NetworkPolicy metadata.finalizers [foo]", np(metadata={"finalizers": ["foo"]}))
add("npmeta-generate-name", "NetworkPolicy with generateName and name", np(metadata={"generateName": "x-"}))

# --- unknown fields and wrong types (kubectl's schema check) ---------------
add("unknown-spec-field", "unknown field spec.podSelecter (typo)",
    np(spec={"podSelecter": {}, "policyTypes": ["Egress"]}))
add("unknown-rule-field", "unknown field egress[].too (typo)", np(spec=egress({"too": [{"podSelector": {}}]})))
add("unknown-port-field", "unknown field ports[].protocl (typo)", ports({"protocl": "UDP", "port": 53}))
add("unknown-top-field", "unknown top-level field", np(extra="x"))
add("unknown-status", "NetworkPolicy status (1.20 has none)", np(status={}))
add("type-policytypes-map", "policyTypes as a map", np(spec={"podSelector": {}, "policyTypes": {"Egress": True}}))
add("type-egress-map", "egress as a map", np(spec={"podSelector": {}, "egress": {"to": []}}))
add("apiversion-extensions", "NetworkPolicy as extensions/v1beta1 (removed)",
    dict(np(), apiVersion="extensions/v1beta1"))
add("apiversion-v1", "Namespace as v1 (plain)", ns("corpus-v1"))

# --- a realistic policy with non-ASCII text around it ----------------------
add("realistic", "the seed's DNS-plus-HTTPS egress policy",
    np(spec=egress(
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                 "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
         "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
         "ports": [{"port": 443}]},
        podSelector={"matchLabels": {"app": "client"}})))


# --- YAML 1.1 scalars (kubectl's reading) where YAML 1.2 reads another type -
yaml11 = [
    ("port-08", ports({"port": Raw("08")}), "port 08: not octal, so YAML 1.1 reads the float 8"),
    ("port-1e2", ports({"port": Raw("1e2")}), "port 1e2: the float 100"),
    ("port-0b", ports({"port": Raw("0b1010000")}), "port 0b1010000: binary 80"),
    ("port-yes", ports({"port": Raw("yes")}), "port yes: a boolean, not a named port"),
    ("port-off", ports({"port": Raw("off")}), "port off: a boolean"),
    ("port-tilde", ports({"port": Raw("~")}), "port ~: null"),
    ("port-80_0", ports({"port": Raw("8_0")}), "port 8_0: the integer 80"),
    ("port-inf", ports({"port": Raw(".inf")}), "port .inf: no JSON form"),
    ("protocol-on", ports({"protocol": Raw("on"), "port": 80}), "protocol on: a boolean"),
    ("exprvalue-yes", expr({"key": "app", "operator": "In", "values": [Raw("yes")]}), "matchExpressions value yes: a boolean"),
    ("exprvalue-int", expr({"key": "app", "operator": "In", "values": [Raw("1")]}), "matchExpressions value 1: a number"),
    ("labelkey-on", pod_labels({Raw("on"): "a"}), "matchLabels key on: the key \"true\""),
    ("labelkey-int", pod_labels({Raw("0x10"): "a"}), "matchLabels key 0x10: the key \"16\""),
    ("labelvalue-n", pod_labels({"app": Raw("n")}), "matchLabels value n: a boolean"),
    ("labelvalue-date", pod_labels({"app": Raw("2020-01-01")}), "matchLabels value 2020-01-01: a timestamp, sent as its text"),
    ("labelvalue-sexagesimal", pod_labels({"app": Raw("1:20")}), "matchLabels value 1:20: not a number to yaml.v2 (but ':' is no label value)"),
    ("cidr-yes", ipblock(Raw("yes")), "ipBlock.cidr yes: a boolean"),
    ("policytypes-on", np(spec={"podSelector": {}, "policyTypes": [Raw("on")]}), "policyTypes [on]: a boolean"),
]
for slug, obj, why in yaml11:
    add(f"yaml11-{slug}", f"YAML 1.1 scalar: {why}", obj)


def write():
    for old in glob.glob(os.path.join(HERE, "*.yaml")):
        os.remove(old)
    for n, (slug, probe, obj) in enumerate(cases):
        body = emit(obj)
        probe = probe.replace("\n", "\\n")
        text = f"# {probe}\n{body}\n"
        with open(os.path.join(HERE, f"{n:03d}-{slug}.yaml"), "w", encoding="utf-8") as f:
            f.write(text)
    print(f"wrote {len(cases)} objects to {HERE}")


write()
