package org.coinvision.sdk

/**
 * A small strict JSON reader/writer with no dependency (Android's org.json reorders keys and reformats numbers,
 * which breaks signature checks). Numbers keep their source text ([JsonNumber.text]), so re-serialising a
 * document written by Python's `json.dumps` reproduces its bytes, and [canonical] gives exactly the bytes of
 * Python's `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` — what manifest
 * signatures cover.
 */
sealed class JsonValue {
    operator fun get(key: String): JsonValue? = (this as? JsonObject)?.map?.get(key)
    operator fun get(index: Int): JsonValue = (this as JsonArray).items[index]
    val string: String? get() = (this as? JsonString)?.value
    val long: Long? get() = (this as? JsonNumber)?.text?.toLongOrNull()
    val double: Double get() = (this as JsonNumber).text.toDouble()
    val list: List<JsonValue> get() = (this as JsonArray).items
    val obj: Map<String, JsonValue> get() = (this as JsonObject).map
}

data class JsonString(val value: String) : JsonValue()
data class JsonNumber(val text: String) : JsonValue() {
    /** An integer literal (Python json writes ints without '.', 'e'). */
    val isInteger: Boolean get() = text.none { it == '.' || it == 'e' || it == 'E' }
}
data class JsonBool(val value: Boolean) : JsonValue()
object JsonNull : JsonValue()
data class JsonArray(val items: List<JsonValue>) : JsonValue()
data class JsonObject(val map: Map<String, JsonValue>) : JsonValue()

class JsonException(message: String) : CoinVisionException(message)

object Json {
    private const val MAX_DEPTH = 64

    fun parse(text: String): JsonValue {
        val p = Parser(text)
        p.ws()
        val v = p.value(0)
        p.ws()
        if (p.i != text.length) throw JsonException("JSON: unexpected text at offset ${p.i}")
        return v
    }

    /** Python's `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`. */
    fun canonical(v: JsonValue): String = StringBuilder().also { write(v, it, sortKeys = true) }.toString()

    fun write(v: JsonValue, out: StringBuilder, sortKeys: Boolean) {
        when (v) {
            is JsonString -> quote(v.value, out)
            is JsonNumber -> out.append(v.text)
            is JsonBool -> out.append(if (v.value) "true" else "false")
            JsonNull -> out.append("null")
            is JsonArray -> {
                out.append('[')
                v.items.forEachIndexed { i, x -> if (i > 0) out.append(','); write(x, out, sortKeys) }
                out.append(']')
            }
            is JsonObject -> {
                out.append('{')
                // Python sorts str keys by code point
                val keys = if (sortKeys) v.map.keys.sortedWith(::compareCodePoints) else v.map.keys.toList()
                keys.forEachIndexed { i, k ->
                    if (i > 0) out.append(',')
                    quote(k, out); out.append(':'); write(v.map.getValue(k), out, sortKeys)
                }
                out.append('}')
            }
        }
    }

    private fun compareCodePoints(a: String, b: String): Int = org.coinvision.sdk.pack.PackBytes.compareCodePoints(a, b)

    /** Python json's escaping with ensure_ascii=False: only `"`, `\`, and control characters below 0x20. */
    fun quote(s: String, out: StringBuilder) {
        out.append('"')
        for (c in s) {
            when (c) {
                '"' -> out.append("\\\"")
                '\\' -> out.append("\\\\")
                '\n' -> out.append("\\n")
                '\r' -> out.append("\\r")
                '\t' -> out.append("\\t")
                '\b' -> out.append("\\b")
                '\u000c' -> out.append("\\f")
                else -> if (c < ' ') out.append("\\u%04x".format(c.code)) else out.append(c)
            }
        }
        out.append('"')
    }

    private class Parser(val s: String) {
        var i = 0

        fun ws() {
            while (i < s.length && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++
        }

        fun fail(what: String): Nothing = throw JsonException("JSON: $what at offset $i")

        fun value(depth: Int): JsonValue {
            if (depth > MAX_DEPTH) fail("nesting deeper than $MAX_DEPTH")
            if (i >= s.length) fail("unexpected end")
            return when (val c = s[i]) {
                '{' -> {
                    i++; ws()
                    val map = LinkedHashMap<String, JsonValue>()
                    if (i < s.length && s[i] == '}') { i++; return JsonObject(map) }
                    while (true) {
                        ws()
                        if (i >= s.length || s[i] != '"') fail("expected a key")
                        val k = string()
                        ws(); if (i >= s.length || s[i] != ':') fail("expected ':'")
                        i++; ws()
                        map[k] = value(depth + 1)
                        ws()
                        if (i < s.length && s[i] == ',') { i++; continue }
                        if (i < s.length && s[i] == '}') { i++; return JsonObject(map) }
                        fail("expected ',' or '}'")
                    }
                    @Suppress("UNREACHABLE_CODE") fail("unreachable")
                }
                '[' -> {
                    i++; ws()
                    val items = ArrayList<JsonValue>()
                    if (i < s.length && s[i] == ']') { i++; return JsonArray(items) }
                    while (true) {
                        ws(); items.add(value(depth + 1)); ws()
                        if (i < s.length && s[i] == ',') { i++; continue }
                        if (i < s.length && s[i] == ']') { i++; return JsonArray(items) }
                        fail("expected ',' or ']'")
                    }
                    @Suppress("UNREACHABLE_CODE") fail("unreachable")
                }
                '"' -> JsonString(string())
                't' -> literal("true", JsonBool(true))
                'f' -> literal("false", JsonBool(false))
                'n' -> literal("null", JsonNull)
                else -> if (c == '-' || c in '0'..'9') number() else fail("unexpected character '$c'")
            }
        }

        fun literal(word: String, v: JsonValue): JsonValue {
            if (!s.startsWith(word, i)) fail("bad literal")
            i += word.length
            return v
        }

        fun number(): JsonValue {
            val m = NUMBER.find(s, i)?.takeIf { it.range.first == i } ?: fail("bad number")
            i = m.range.last + 1
            return JsonNumber(m.value)
        }

        fun string(): String {
            i++ // opening quote
            val sb = StringBuilder()
            while (true) {
                if (i >= s.length) fail("unterminated string")
                val c = s[i++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (i >= s.length) fail("bad escape")
                        when (val e = s[i++]) {
                            '"' -> sb.append('"'); '\\' -> sb.append('\\'); '/' -> sb.append('/')
                            'b' -> sb.append('\b'); 'f' -> sb.append('\u000c'); 'n' -> sb.append('\n')
                            'r' -> sb.append('\r'); 't' -> sb.append('\t')
                            'u' -> {
                                if (i + 4 > s.length) fail("bad \\u escape")
                                sb.append(s.substring(i, i + 4).toIntOrNull(16)?.toChar() ?: fail("bad \\u escape"))
                                i += 4
                            }
                            else -> fail("bad escape '\\$e'")
                        }
                    }
                    c < ' ' -> fail("control character in string")
                    else -> sb.append(c)
                }
            }
        }

        companion object {
            val NUMBER = Regex("-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?")
        }
    }
}
