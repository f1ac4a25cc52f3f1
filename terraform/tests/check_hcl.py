#!/usr/bin/env python3
"""Static checks for Trackline's terraform/ tree.

Terraform/OpenTofu cannot run in CI (no providers can be downloaded), so this
parses every file with python-hcl2 and checks structure instead:

  parse        every .tf and .tfvars(.example) file parses as HCL
  versions     each module/environment pins required_version and provider versions
  variable     every variable has a type and a non-empty description
  unused-var   every variable of a module/environment is referenced (var.NAME)
  output       every output has a non-empty description
  module       module calls: local source exists, every required variable is
               passed, no unknown arguments, referenced outputs exist
  unused-module / unused-output
               every module is called by an environment and each of its
               outputs is used by at least one environment
  secret       no PEM blocks, AWS access keys, or password/secret/token literals
  ingress      security-group ingress opens only the ports listed for that
               module in README.md's ports table; 0.0.0.0/0 only on ports
               marked public; no protocol -1, no port ranges
  listener     NLB listeners only use documented ports
  template     templatefile()/file() targets exist under ${path.module}, and
               every variable a template uses is passed to it
  tfvars       terraform.tfvars.example only sets declared variables and sets
               every required one
  readme       README.md explains init/plan/apply and documents every module
               variable and output

Usage: check_hcl.py TERRAFORM_ROOT
Prints one "PROBLEM [code] file: message" line per problem and a summary line
"terraform check: N modules, M environments, F files, P problems".
Exit status: 0 without problems, 1 with problems, 2 on usage/setup errors.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field

try:
    import hcl2  # python-hcl2
except ImportError:  # pragma: no cover - the shell wrapper installs it
    print("check_hcl.py: python-hcl2 is not installed (pip install 'python-hcl2>=4,<8')", file=sys.stderr)
    sys.exit(2)

META_MODULE_ARGS = {"source", "version", "providers", "count", "for_each", "depends_on"}
PUBLIC_CIDRS = {"0.0.0.0/0", "::/0"}
TEMPLATE_KEYWORDS = {"for", "in", "if", "else", "endif", "endfor", "true", "false", "null"}

SECRET_PATTERNS = [
    (re.compile(r"-----BEGIN [A-Z0-9 ]*(PRIVATE KEY|CERTIFICATE)[A-Z ]*-----"), "PEM block (keys/certs belong in Secrets Manager)"),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "AWS access key ID"),
    (re.compile(r"(?i)aws_secret_access_key\s*="), "AWS secret access key"),
]
# key = "literal" where the key looks like a credential
SECRET_ASSIGN = re.compile(r"""(?i)\b([a-z0-9_]+)\s*=\s*"([^"]*)\"""")
SECRET_WORDS = {"password", "passwd", "pwd", "secret", "token", "apikey"}
SECRET_PAIRS = ("private_key", "api_key", "access_key", "secret_key")
SECRET_KEY_OK_SUFFIXES = ("_arn", "_arns", "_id", "_ids", "_name", "_path", "_file", "_version", "_url")

SCANNED_EXTS = (".tf", ".tftpl", ".tfvars", ".tfvars.example", ".yaml", ".yml", ".json", ".toml", ".sh", ".tpl")


@dataclass
class Stack:
    kind: str  # "module" or "environment"
    name: str
    path: str
    tf_files: list = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # file -> text
    variables: dict = field(default_factory=dict)  # name -> (file, body)
    outputs: dict = field(default_factory=dict)
    modules: dict = field(default_factory=dict)
    resources: list = field(default_factory=list)  # (file, type, name, body)
    terraform_blocks: list = field(default_factory=list)


class Checker:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.problems: list[tuple[str, str, str]] = []
        self.files_checked: set[str] = set()
        self.stacks: dict[str, Stack] = {}

    # ------------------------------------------------------------ helpers
    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def problem(self, code: str, path: str, msg: str) -> None:
        self.problems.append((code, self.rel(path) if os.path.isabs(path) else path, msg))

    @staticmethod
    def blocks(parsed: dict, key: str):
        """Yield (name, body) for labelled blocks like variable "x" {...}."""
        for entry in parsed.get(key, []) or []:
            if isinstance(entry, dict):
                for name, body in entry.items():
                    yield name, body if isinstance(body, dict) else {}

    @staticmethod
    def as_list(value):
        if value is None:
            return []
        return value if isinstance(value, list) else [value]

    @staticmethod
    def literal(value):
        """Return a literal string/int, or None if the value is an expression."""
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            v = value
            if len(v) >= 2 and v[0] == v[-1] == '"':  # some hcl2 versions keep quotes
                v = v[1:-1]
            if "${" in v:
                return None
            return int(v) if re.fullmatch(r"-?\d+", v) else v
        return None

    # ------------------------------------------------------------ loading
    def discover(self) -> None:
        for kind, folder in (("module", "modules"), ("environment", "environments")):
            base = os.path.join(self.root, folder)
            if not os.path.isdir(base):
                continue
            for name in sorted(os.listdir(base)):
                path = os.path.join(base, name)
                if os.path.isdir(path):
                    self.stacks[path] = Stack(kind, name, path)
        if not any(s.kind == "module" for s in self.stacks.values()):
            self.problem("layout", self.root, "no modules found under modules/")
        if not any(s.kind == "environment" for s in self.stacks.values()):
            self.problem("layout", self.root, "no environments found under environments/")

    def parse_file(self, path: str):
        self.files_checked.add(path)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            self.problem("parse", path, f"cannot read: {exc}")
            return None, ""
        try:
            return hcl2.loads(text), text
        except Exception as exc:  # lark raises several exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.problem("parse", path, f"HCL parse error: {first}")
            return None, text

    def load(self) -> None:
        for stack in self.stacks.values():
            tf = sorted(f for f in os.listdir(stack.path) if f.endswith(".tf"))
            if not tf:
                self.problem("layout", stack.path, "directory has no .tf files")
            for fname in tf:
                path = os.path.join(stack.path, fname)
                parsed, text = self.parse_file(path)
                stack.tf_files.append(path)
                stack.raw[path] = text
                if parsed is None:
                    continue
                for name, body in self.blocks(parsed, "variable"):
                    stack.variables[name] = (path, body)
                for name, body in self.blocks(parsed, "output"):
                    stack.outputs[name] = (path, body)
                for name, body in self.blocks(parsed, "module"):
                    stack.modules[name] = (path, body)
                for entry in parsed.get("resource", []) or []:
                    for rtype, named in entry.items():
                        for rname, body in (named or {}).items():
                            stack.resources.append((path, rtype, rname, body if isinstance(body, dict) else {}))
                for body in parsed.get("terraform", []) or []:
                    stack.terraform_blocks.append((path, body))

    # ------------------------------------------------------------ checks
    def check_versions(self, s: Stack) -> None:
        has_version = False
        providers = {}
        for _path, body in s.terraform_blocks:
            if body.get("required_version"):
                has_version = True
            for rp in self.as_list(body.get("required_providers")):
                if isinstance(rp, dict):
                    providers.update(rp)
        if not has_version:
            self.problem("versions", s.path, "terraform { required_version } is not set")
        if not providers:
            self.problem("versions", s.path, "terraform { required_providers } is not set")
        for pname, spec in providers.items():
            if not isinstance(spec, dict) or not spec.get("version") or not spec.get("source"):
                self.problem("versions", s.path, f"provider {pname!r} needs both source and a pinned version")

    def check_variables(self, s: Stack) -> None:
        all_text = "\n".join(s.raw.values())
        for name, (path, body) in s.variables.items():
            if not body.get("type"):
                self.problem("variable", path, f"variable {name!r} has no type")
            desc = body.get("description")
            if not isinstance(desc, str) or not desc.strip():
                self.problem("variable", path, f"variable {name!r} has no description")
            if not re.search(r"\bvar\." + re.escape(name) + r"\b", all_text):
                self.problem("unused-var", path, f"variable {name!r} is declared but never used")
            # credential-looking variables must not carry a literal default
            lname = name.lower()
            if re.search(r"password|passwd|secret|token|private_key|api_key", lname) and not lname.endswith(SECRET_KEY_OK_SUFFIXES):
                default = self.literal(body.get("default"))
                if isinstance(default, str) and default:
                    self.problem("secret", path, f"variable {name!r} has a literal default that looks like a secret")

    def check_outputs(self, s: Stack) -> None:
        for name, (path, body) in s.outputs.items():
            desc = body.get("description")
            if not isinstance(desc, str) or not desc.strip():
                self.problem("output", path, f"output {name!r} has no description")
            if "value" not in body:
                self.problem("output", path, f"output {name!r} has no value")

    def check_module_calls(self, env: Stack, used_outputs: dict) -> None:
        text = "\n".join(env.raw.values())
        for mname, (path, body) in env.modules.items():
            source = self.literal(body.get("source"))
            if not isinstance(source, str):
                self.problem("module", path, f"module {mname!r} has no literal source")
                continue
            if not source.startswith(("./", "../")):
                continue  # registry/git modules cannot be checked offline
            mdir = os.path.normpath(os.path.join(env.path, source))
            target = self.stacks.get(mdir)
            if target is None:
                if not os.path.isdir(mdir) or not any(f.endswith(".tf") for f in os.listdir(mdir)):
                    self.problem("module", path, f"module {mname!r}: source {source!r} does not exist")
                else:
                    self.problem("module", path, f"module {mname!r}: source {source!r} is not under modules/")
                continue
            used_outputs.setdefault(mdir, set())
            args = set(body) - META_MODULE_ARGS
            declared = set(target.variables)
            required = {v for v, (_p, b) in target.variables.items() if "default" not in b}
            for missing in sorted(required - args):
                self.problem("module", path, f"module {mname!r} does not pass required variable {missing!r} of {target.name}")
            for unknown in sorted(args - declared):
                self.problem("module", path, f"module {mname!r} passes {unknown!r}, which {target.name} does not declare")
            # module.NAME.out / module.NAME[key].out
            refs = set(re.findall(r"\bmodule\." + re.escape(mname) + r"(?:\[[^\]]*\])?\.(\w+)", text))
            # for k, m in module.NAME : ... m.out   (same line)
            for line in text.splitlines():
                for alias in re.findall(r"\bfor\s+\w+\s*,\s*(\w+)\s+in\s+module\." + re.escape(mname) + r"\b", line):
                    refs |= set(re.findall(r"(?<![\w.])" + re.escape(alias) + r"\.(\w+)", line))
            for ref in sorted(refs):
                if ref not in target.outputs:
                    self.problem("module", path, f"module {mname!r}: output {ref!r} does not exist in {target.name}")
            used_outputs[mdir] |= refs

    def check_secrets(self, path: str, text: str) -> None:
        for lineno, line in enumerate(text.splitlines(), 1):
            for rx, what in SECRET_PATTERNS:
                if rx.search(line):
                    self.problem("secret", f"{self.rel(path)}:{lineno}", f"looks like a hard-coded secret: {what}")
            for m in SECRET_ASSIGN.finditer(line):
                key, value = m.group(1).lower(), m.group(2)
                if not (set(key.split("_")) & SECRET_WORDS or any(p in key for p in SECRET_PAIRS)):
                    continue
                if key.endswith(SECRET_KEY_OK_SUFFIXES) or key in ("description", "sid"):
                    continue
                if not value or "${" in value or value.startswith(("arn:", "$")):
                    continue
                self.problem("secret", f"{self.rel(path)}:{lineno}", f"literal value assigned to {m.group(1)!r}")

    def readme_ports(self):
        """Ports table rows: | module | port | UDP/TCP | public/internal... |"""
        path = os.path.join(self.root, "README.md")
        ports: dict[str, dict[tuple[str, int], bool]] = {}
        if not os.path.isfile(path):
            return ports
        module_names = {s.name for s in self.stacks.values() if s.kind == "module"}
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
                if len(cells) >= 4 and cells[0] in module_names and cells[1].isdigit() and cells[2].upper() in ("UDP", "TCP"):
                    public = cells[3].lower().startswith("public")
                    ports.setdefault(cells[0], {})[(cells[2].lower(), int(cells[1]))] = public
        return ports

    def check_ingress(self, s: Stack, documented: dict) -> None:
        allowed = documented.get(s.name)
        opened: set = set()
        for path, rtype, rname, body in s.resources:
            rules = []
            if rtype == "aws_vpc_security_group_ingress_rule":
                sources = [body.get("cidr_ipv4"), body.get("cidr_ipv6")]
                rules.append((body.get("ip_protocol"), body.get("from_port"), body.get("to_port"), sources))
            elif rtype == "aws_security_group_rule" and self.literal(body.get("type")) == "ingress":
                sources = self.as_list(body.get("cidr_blocks")) + self.as_list(body.get("ipv6_cidr_blocks"))
                rules.append((body.get("protocol"), body.get("from_port"), body.get("to_port"), sources))
            elif rtype == "aws_security_group":
                for ing in self.as_list(body.get("ingress")):
                    if isinstance(ing, dict):
                        sources = self.as_list(ing.get("cidr_blocks")) + self.as_list(ing.get("ipv6_cidr_blocks"))
                        rules.append((ing.get("protocol"), ing.get("from_port"), ing.get("to_port"), sources))
            for proto, lo, hi, sources in rules:
                where = f"{rtype}.{rname}"
                proto = self.literal(proto)
                proto = {6: "tcp", "6": "tcp", 17: "udp", "17": "udp"}.get(proto, proto)
                lo, hi = self.literal(lo), self.literal(hi)
                if proto not in ("tcp", "udp"):
                    self.problem("ingress", path, f"{where}: protocol {proto!r} is not a literal tcp/udp (protocol -1 opens everything)")
                    continue
                if not isinstance(lo, int) or not isinstance(hi, int):
                    self.problem("ingress", path, f"{where}: ports must be literal numbers so they can be checked")
                    continue
                if lo != hi:
                    self.problem("ingress", path, f"{where}: opens a port range {lo}-{hi}")
                    continue
                key = (proto, lo)
                opened.add(key)
                if allowed is None:
                    self.problem("ingress", path, f"{where}: module {s.name!r} has no ports table in README.md")
                    continue
                if key not in allowed:
                    self.problem("ingress", path, f"{where}: opens {proto.upper()} {lo}, which README.md does not document for {s.name}")
                    continue
                world = any(self.literal(src) in PUBLIC_CIDRS for src in sources)
                if world and not allowed[key]:
                    self.problem("ingress", path, f"{where}: opens internal port {proto.upper()} {lo} to the whole internet")
        if s.kind == "module" and allowed:
            for proto, port in sorted(set(allowed) - opened):
                self.problem("ingress", s.path, f"README.md documents {proto.upper()} {port} for {s.name}, but no ingress rule opens it")

    def check_listeners(self, s: Stack, documented: dict) -> None:
        allowed = documented.get(s.name) or {}
        for path, rtype, rname, body in s.resources:
            if rtype != "aws_lb_listener":
                continue
            port, proto = self.literal(body.get("port")), self.literal(body.get("protocol"))
            if not isinstance(port, int) or not isinstance(proto, str):
                self.problem("listener", path, f"aws_lb_listener.{rname}: port/protocol must be literals")
                continue
            l4 = {"TCP_UDP": "udp", "TLS": "tcp"}.get(proto.upper(), proto.lower())
            if (l4, port) not in allowed:
                self.problem("listener", path, f"aws_lb_listener.{rname}: {proto} {port} is not a documented port of {s.name}")

    @staticmethod
    def call_text(text: str, start: int) -> str:
        """Text of a call starting at the '(' at index start, up to its matching ')'."""
        depth, i, in_str = 0, start, False
        while i < len(text):
            c = text[i]
            if in_str:
                if c == "\\":
                    i += 1
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
                if depth == 0:
                    return text[start:i + 1]
            i += 1
        return text[start:]

    @staticmethod
    def template_identifiers(template: str) -> set:
        names: set = set()
        loop_vars: set = set()
        body = template.replace("$${", "").replace("%%{", "")
        for m in re.finditer(r"[$%]\{~?(.*?)~?\}", body, re.S):
            expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', m.group(1))
            fm = re.match(r"\s*for\s+(\w+)(?:\s*,\s*(\w+))?\s+in\b", expr)
            if fm:
                loop_vars |= {v for v in fm.groups() if v}
            for ident in re.findall(r"(?<![\w.])([A-Za-z_]\w*)\b(?!\s*\()", expr):
                if ident not in TEMPLATE_KEYWORDS:
                    names.add(ident)
        return names - loop_vars

    def check_templates(self, s: Stack) -> None:
        for path, text in s.raw.items():
            for m in re.finditer(r"\b(templatefile|file)\s*\(", text):
                call = self.call_text(text, m.end() - 1)
                pm = re.match(r'\(\s*"([^"]*)"', call)
                if not pm:
                    self.problem("template", path, f"{m.group(1)}() path is not a string literal")
                    continue
                raw_path = pm.group(1)
                if not raw_path.startswith("${path.module}/"):
                    self.problem("template", path, f"{m.group(1)}({raw_path!r}) should be relative to ${{path.module}}")
                    continue
                target = os.path.join(s.path, raw_path[len("${path.module}/"):])
                if not os.path.isfile(target):
                    self.problem("template", path, f"{m.group(1)}() target {self.rel(target)} does not exist")
                    continue
                self.files_checked.add(target)
                if m.group(1) != "templatefile":
                    continue
                with open(target, encoding="utf-8") as fh:
                    tmpl = fh.read()
                self.check_secrets(target, tmpl)
                rest = call[pm.end():]
                brace = rest.find("{")
                passed = set()
                if brace >= 0:
                    mapping = self.call_text(rest, brace)
                    inner = mapping[1:-1]
                    # top-level keys only: blank out nested brackets/strings
                    flat, depth = [], 0
                    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', inner):
                        if ch in "([{":
                            depth += 1
                        elif ch in ")]}":
                            depth -= 1
                        flat.append(ch if depth == 0 else " ")
                    passed = set(re.findall(r"(?:^|[,\n])\s*(\w+)\s*=(?!=)", "".join(flat)))
                for ident in sorted(self.template_identifiers(tmpl) - passed):
                    self.problem("template", target, f"template uses {ident!r}, which {self.rel(path)} does not pass to templatefile()")

    def check_tfvars(self, env: Stack) -> None:
        for fname in sorted(os.listdir(env.path)):
            if not (fname.endswith(".tfvars") or fname.endswith(".tfvars.example")):
                continue
            path = os.path.join(env.path, fname)
            parsed, _ = self.parse_file(path)
            if parsed is None:
                continue
            for key in sorted(set(parsed) - set(env.variables)):
                self.problem("tfvars", path, f"sets {key!r}, which the environment does not declare")
            if fname.endswith(".example"):
                required = {v for v, (_p, b) in env.variables.items() if "default" not in b}
                for key in sorted(required - set(parsed)):
                    self.problem("tfvars", path, f"does not show required variable {key!r}")
        if not any(f.endswith(".tfvars.example") for f in os.listdir(env.path)):
            self.problem("tfvars", env.path, "no terraform.tfvars.example for operators")

    def check_readme(self) -> None:
        path = os.path.join(self.root, "README.md")
        if not os.path.isfile(path):
            self.problem("readme", self.root, "README.md is missing")
            return
        self.files_checked.add(path)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for phrase in ("terraform init", "terraform plan", "terraform apply", "Secrets Manager"):
            if phrase not in text:
                self.problem("readme", path, f"does not mention {phrase!r} (how an operator applies the modules)")
        for s in self.stacks.values():
            if s.kind != "module":
                continue
            for what, names in (("variable", s.variables), ("output", s.outputs)):
                for name in sorted(names):
                    if not re.search(r"`" + re.escape(name) + r"`", text):
                        self.problem("readme", path, f"{s.name} {what} `{name}` is not documented")

    # ------------------------------------------------------------ driver
    def run(self) -> int:
        self.discover()
        self.load()
        documented = self.readme_ports()
        used_outputs: dict = {}
        for s in self.stacks.values():
            self.check_versions(s)
            self.check_variables(s)
            self.check_outputs(s)
            self.check_ingress(s, documented)
            self.check_listeners(s, documented)
            self.check_templates(s)
            if s.kind == "environment":
                self.check_module_calls(s, used_outputs)
                self.check_tfvars(s)
        for s in self.stacks.values():
            if s.kind != "module":
                continue
            if s.path not in used_outputs:
                self.problem("unused-module", s.path, f"module {s.name!r} is not used by any environment")
                continue
            for out in sorted(set(s.outputs) - used_outputs[s.path]):
                self.problem("unused-output", s.outputs[out][0], f"output {out!r} of {s.name} is not used by any environment")
        self.check_readme()
        # secrets: every text file in the checked stacks
        for s in self.stacks.values():
            for dirpath, dirnames, filenames in os.walk(s.path):
                dirnames[:] = [d for d in dirnames if d != ".terraform"]
                for fname in filenames:
                    if fname.endswith(SCANNED_EXTS) and not fname.endswith(".tftpl"):  # templates scanned above
                        fpath = os.path.join(dirpath, fname)
                        self.files_checked.add(fpath)
                        with open(fpath, encoding="utf-8", errors="replace") as fh:
                            self.check_secrets(fpath, fh.read())
        for code, where, msg in sorted(self.problems):
            print(f"PROBLEM [{code}] {where}: {msg}")
        n_mod = sum(1 for s in self.stacks.values() if s.kind == "module")
        n_env = sum(1 for s in self.stacks.values() if s.kind == "environment")
        print(f"terraform check: {n_mod} modules, {n_env} environments, {len(self.files_checked)} files, {len(self.problems)} problems")
        return 1 if self.problems else 0


def main(argv: list) -> int:
    args = [a for a in argv[1:] if not a.startswith("-")]
    if len(args) != 1 or not os.path.isdir(args[0]):
        print(__doc__, file=sys.stderr)
        return 2
    return Checker(args[0]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
