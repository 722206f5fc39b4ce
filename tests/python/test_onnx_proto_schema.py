"""proto/onnx.proto must agree with the official ONNX schema.

Every message, field and enum value in our subset is looked up in the `onnx`
package's compiled schema (onnx.onnx_ml_pb2): same field numbers, same labels
(repeated or not), same enum numbers. A wrong number would silently write a
different field, so this is checked field by field.
"""

import re
from pathlib import Path

import onnx
import pytest
from google.protobuf.descriptor import FieldDescriptor

PROTO = Path(__file__).resolve().parents[2] / "proto" / "onnx.proto"


def parse_subset(text):
    """(scope path, kind, name, number, repeated) for every field / enum value."""
    text = re.sub(r"//[^\n]*", "", text)
    tokens = re.findall(r"0x[0-9A-Fa-f]+|[A-Za-z_][\w.]*|\d+|[{};=\[\]]", text)
    stack, out, i = [], [], 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("message", "enum", "oneof") and i + 2 < len(tokens) and tokens[i + 2] == "{":
            stack.append((t, tokens[i + 1]))
            i += 3
            continue
        if t == "}":
            stack.pop()
            i += 1
            continue
        if stack and stack[-1][0] == "enum" and i + 2 < len(tokens) and tokens[i + 1] == "=":
            out.append(([s[1] for s in stack], "enum", t, int(tokens[i + 2], 0), False))
            i += 3
            continue
        if stack and stack[-1][0] in ("message", "oneof"):
            # [repeated] type name = number ...;
            j, repeated = i, False
            if tokens[j] == "repeated":
                repeated, j = True, j + 1
            if j + 3 < len(tokens) and tokens[j + 2] == "=":
                scope = [s[1] for s in stack if s[0] == "message"]
                out.append((scope, "field", tokens[j + 1], int(tokens[j + 3], 0), repeated))
                while tokens[i] != ";":
                    i += 1
                i += 1
                continue
        i += 1
    return out


def lookup_message(scope):
    desc = onnx.onnx_ml_pb2.DESCRIPTOR.message_types_by_name[scope[0]]
    for name in scope[1:]:
        desc = desc.nested_types_by_name[name]
    return desc


def test_our_subset_matches_the_official_schema():
    entries = parse_subset(PROTO.read_text())
    fields = [e for e in entries if e[1] == "field"]
    enums = [e for e in entries if e[1] == "enum"]
    assert len(fields) > 60 and len(enums) > 30, (len(fields), len(enums))
    for scope, _, name, number, repeated in fields:
        desc = lookup_message(scope).fields_by_name.get(name)
        assert desc is not None, f"{'.'.join(scope)}.{name} is not in the ONNX schema"
        assert desc.number == number, f"{'.'.join(scope)}.{name}: {number} != {desc.number}"
        is_repeated = desc.is_repeated if hasattr(desc, "is_repeated") else (
            desc.label == FieldDescriptor.LABEL_REPEATED
        )
        assert is_repeated == repeated, f"{'.'.join(scope)}.{name}: repeated mismatch"
    for scope, _, name, number, _ in enums:
        if scope == ["Version"]:
            value = onnx.onnx_ml_pb2.Version.Value(name)
        else:
            desc = lookup_message(scope[:-1]).enum_types_by_name[scope[-1]]
            value = desc.values_by_name[name].number
        assert value == number, f"{'.'.join(scope)}.{name}: {number} != {value}"


@pytest.mark.parametrize(
    "message",
    ["ModelProto", "GraphProto", "NodeProto", "AttributeProto", "TensorProto", "ValueInfoProto",
     "TypeProto", "TensorShapeProto", "OperatorSetIdProto", "StringStringEntryProto"],
)
def test_required_messages_are_present(message):
    assert re.search(rf"\bmessage {message}\b", PROTO.read_text())
