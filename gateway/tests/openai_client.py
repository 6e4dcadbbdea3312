"""Drive POST /v1/audio/transcriptions with the official openai client.

Run by gateway/tests/api.rs: BASE_URL and TOKEN (an access JWT, sent as the
API key) come from the environment, the audio file is the argument. Prints
one JSON object with what each call returned.
"""

import json
import os
import sys

from openai import OpenAI


def main() -> int:
    client = OpenAI(base_url=os.environ["BASE_URL"] + "/v1", api_key=os.environ["TOKEN"], max_retries=0)
    path = sys.argv[1]
    out = {}

    def call(**kwargs):
        with open(path, "rb") as f:
            return client.audio.transcriptions.create(file=f, **kwargs)

    out["json"] = call(model="whisper-1", language="en").text
    verbose = call(model="tiny.en", response_format="verbose_json")
    out["verbose"] = {
        "language": verbose.language,
        "duration": verbose.duration,
        "text": verbose.text,
        "segments": [(s.start, s.end, s.text) for s in (verbose.segments or [])],
    }
    out["srt"] = call(model="base", language="en", response_format="srt")
    out["text"] = call(model="whisper-1", response_format="text", prompt="weather report, mountains")
    try:
        call(model="large-v9")
        out["bad_model"] = None
    except Exception as e:  # the client raises BadRequestError
        out["bad_model"] = getattr(e, "status_code", repr(e))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
