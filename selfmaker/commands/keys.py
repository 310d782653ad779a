"""`selfmaker keys create|list|delete`: the access keys a configured `selfmaker up` accepts.

Once the home holds a key, every call but ``GET /ping`` must carry a SigV4 signature made with one of them
(boto3 with ``aws_access_key_id`` / ``aws_secret_access_key`` set to it). The secret is printed once, by
``create``; ``list`` never shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfmaker.credentials import CredentialsError, CredentialStore
from selfmaker.settings import PlatformSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfmaker keys", description=__doc__)
    parser.add_argument("--home", type=Path, help="state directory (default $SELFMAKER_HOME or ~/.selfmaker)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{create,list,delete}")
    create = sub.add_parser("create", help="make a new key and print its id and secret (once)")
    create.add_argument("--name", default="", help="a name for people (unique)")
    create.add_argument(
        "--allow",
        action="append",
        metavar="ACTION",
        help="an action the key may call, IAM syntax (sagemaker:InvokeEndpoint, sagemaker:Describe*); "
        "repeat for more; default: every action",
    )
    create.add_argument("--json", action="store_true", help="print the key as JSON")
    listing = sub.add_parser("list", help="the keys (ids, names, allow-lists; never the secrets)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    delete = sub.add_parser("delete", help="remove a key (by id or name); it stops working at once")
    delete.add_argument("key", help="key id or name")
    for p in (create, listing, delete):  # --home after the action too: `selfmaker keys list --home H`
        p.add_argument("--home", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str]) -> int:
    """Run one ``keys`` action; a mistake is one line on stderr and exit code 2."""
    args = _parser().parse_args(argv)
    home = args.home or PlatformSettings().home
    store = CredentialStore(home)
    try:
        if args.action == "create":
            key = store.create(args.name, args.allow)
            if args.json:
                print(json.dumps({**key.public(), "SecretAccessKey": key.secret}))
            else:
                print(f"AWS_ACCESS_KEY_ID={key.key_id}")
                print(f"AWS_SECRET_ACCESS_KEY={key.secret}")
                print(
                    "(the secret is shown only now; `selfmaker keys delete` revokes the key)", file=sys.stderr
                )
        elif args.action == "list":
            keys = [k.public() for k in store.keys().values()]
            if args.json:
                print(json.dumps(keys))
            elif not keys:
                print(f"no keys in {store.path}: the platform accepts unsigned calls on loopback only")
            else:
                for item in keys:
                    actions = item["Actions"]
                    allowed = ", ".join(actions) if isinstance(actions, list) else "all actions"
                    print(f"{item['KeyId']}  {item['Name'] or '-'}  created {item['Created']}  {allowed}")
        else:
            key = store.delete(args.key)
            print(f"deleted {key.key_id}" + (f" ({key.name})" if key.name else ""))
    except CredentialsError as exc:
        print(f"selfmaker keys: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"selfmaker keys: cannot use {store.path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
