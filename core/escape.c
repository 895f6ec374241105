/* Untrusted text made safe for a one-line message: whatever a terminal could act on
 * (control bytes, escape sequences, C1 controls, line separators, bidirectional overrides)
 * and bytes that are not UTF-8 are shown as escapes instead of being passed through. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "joule/common.h"

/* Length of the UTF-8 sequence at s (1..4) and its code point, or 0 when s does not start
 * a well-formed one (overlong forms, surrogates and code points past U+10FFFF included). */
static int utf8_decode(const unsigned char *s, uint32_t *cp) {
    unsigned c = s[0];
    int len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0) len = 2, v = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, v = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, v = c & 0x07, min = 0x10000;
    else return 0;
    for (int k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0; /* also stops at the NUL */
        v = (v << 6) | (s[k] & 0x3F);
    }
    if (v < min || (v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF) return 0;
    *cp = v;
    return len;
}

/* Code points a terminal may act on, or that may break a line or reorder text. */
static bool unsafe_cp(uint32_t cp) {
    return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029 ||
           (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

/* The escape for one unsafe unit (a control code point or an invalid byte). */
static int escape_unit(char *out, size_t cap, uint32_t cp, bool byte) {
    if (!byte && cp == '\n') return snprintf(out, cap, "\\n");
    if (!byte && cp == '\r') return snprintf(out, cap, "\\r");
    if (!byte && cp == '\t') return snprintf(out, cap, "\\t");
    if (byte || cp < 0x80) return snprintf(out, cap, "\\x%02x", (unsigned)cp);
    return snprintf(out, cap, "\\u%04x", (unsigned)cp);
}

/* The output for the unit (a code point or an invalid byte) at p into unit[16]: its
 * length, with *len the input bytes it covers. */
static int next_unit(const unsigned char *p, bool quote_bs, char *unit, int *len) {
    uint32_t cp = 0;
    *len = utf8_decode(p, &cp);
    if (*len == 0) {
        *len = 1;
        return escape_unit(unit, 16, *p, true);
    }
    if (unsafe_cp(cp)) return escape_unit(unit, 16, cp, false);
    if (cp == '\\' && quote_bs) return snprintf(unit, 16, "\\\\");
    memcpy(unit, p, (size_t)*len);
    return *len;
}

/* Copies s into buf with unsafe units escaped (and backslashes doubled when `quote_bs`);
 * when the result does not fit, as many whole units as fit before a closing "...". */
static char *escape(char *buf, size_t cap, const char *s, bool quote_bs) {
    if (cap == 0) return buf;
    char unit[16];
    int len;
    size_t total = 0, room = cap - 1;
    for (const unsigned char *q = (const unsigned char *)s; *q; q += len)
        total += (size_t)next_unit(q, quote_bs, unit, &len);
    size_t limit = total <= room ? room : room >= 3 ? room - 3 : 0, n = 0;
    const unsigned char *p = (const unsigned char *)s;
    for (; *p; p += len) {
        int w = next_unit(p, quote_bs, unit, &len);
        if (n + (size_t)w > limit) break;
        memcpy(buf + n, unit, (size_t)w);
        n += (size_t)w;
    }
    if (*p) { /* cut: room - n >= 3 unless cap < 4 */
        size_t dots = room - n < 3 ? room - n : 3;
        memcpy(buf + n, "...", dots);
        n += dots;
    }
    buf[n] = '\0';
    return buf;
}

char *joule_escape(char *buf, size_t cap, const char *s) { return escape(buf, cap, s ? s : "(null)", true); }

char *joule_sanitize_line(char *buf, size_t cap, const char *s) { return escape(buf, cap, s ? s : "", false); }

const char *joule_q(const char *s) {
    static _Thread_local char ring[8][JOULE_Q_MAX + 1];
    static _Thread_local unsigned next;
    char *b = ring[next++ % 8];
    return joule_escape(b, sizeof ring[0], s);
}
