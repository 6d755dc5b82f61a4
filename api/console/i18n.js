// The console's languages: Russian for a browser whose first language is Russian, English otherwise,
// and the other one a click away (kept in this browser). EVERY string the console shows is here, in
// one catalog: the views write English (the message id, as gettext does) and t() gives the chosen
// language's text. Entries with {placeholders} match sentences made from parts ("Page {n}"); a value
// may be a function of those parts (Russian plural forms). Dates and numbers use the language's locale.

const STORE = "tone-platform.lang";

export function lang() {
  const chosen = localStorage.getItem(STORE);
  if (chosen === "ru" || chosen === "en") return chosen;
  const first = (navigator.languages && navigator.languages[0]) || navigator.language || "en";
  return first.toLowerCase().startsWith("ru") ? "ru" : "en";
}

export function setLang(value) {
  localStorage.setItem(STORE, value);
}

export function locale() {
  return lang() === "ru" ? "ru-RU" : "en-GB";
}

/** 1 фраза, 2 фразы, 5 фраз. */
export function plural(n, one, few, many) {
  const m10 = n % 10;
  const m100 = n % 100;
  if (m10 === 1 && m100 !== 11) return one;
  if (m10 >= 2 && m10 <= 4 && (m100 < 12 || m100 > 14)) return few;
  return many;
}

// "7 calls found", "20+ calls found": counted things in their Russian forms (1 звонок, 2 звонка, 5 звонков)
const phrasesFound = (p) => plural(Number(p.n), `Найдена ${p.n} фраза`, `Найдено ${p.n} фразы`, `Найдено ${p.n} фраз`);
const callsFound = (p) => plural(Number(p.n), `Найден ${p.n} звонок`, `Найдено ${p.n} звонка`, `Найдено ${p.n} звонков`);
const morePhrasesFound = (p) => `Найдено больше ${p.n} ${plural(Number(p.n), "фразы", "фраз", "фраз")}`;
const moreCallsFound = (p) => `Найдено больше ${p.n} ${plural(Number(p.n), "звонка", "звонков", "звонков")}`;
const callsMeasured = (p) =>
  plural(Number(p.n), `Проанализирован ${p.n} звонок.`, `Проанализировано ${p.n} звонка.`, `Проанализировано ${p.n} звонков.`);

const RU = {
  // shell
  "Skip to content": "К содержимому",
  Jobs: "Задания",
  Upload: "Загрузка",
  Live: "Живой эфир",
  Batches: "Пакеты",
  "Sign out": "Выйти",
  Main: "Главное меню",
  "Transcription of Russian telephone speech with T-one. The console uses the platform's public API:":
    "Распознавание русской телефонной речи моделью T-one. Консоль работает через открытый API платформы:",
  "API reference": "Справочник API",
  "Authentication is off on this server (TONE_AUTH_DISABLED): no key is asked":
    "На этом сервере проверка ключей отключена (TONE_AUTH_DISABLED): ключ не нужен",
  Dismiss: "Закрыть",
  "This page could not be shown. Reload the page; if it keeps happening, tell your administrator.":
    "Не удалось показать страницу. Обновите её; если не поможет, сообщите администратору.",
  "Page not found": "Страница не найдена",
  "There is no such page in the console. ": "В консоли нет такой страницы. ",
  "Go to the jobs.": "К заданиям.",
  "This API key was not accepted (it may have been revoked). Sign in again.":
    "Этот ключ API не принят (возможно, он отозван). Войдите снова.",
  "Something went wrong in the console. Reload the page; your jobs are safe on the server.":
    "В консоли что-то пошло не так. Обновите страницу: ваши задания на сервере не пострадали.",
  // sign in
  "Sign in": "Войти",
  "Transcribe recordings, watch jobs and batches, and try live recognition.":
    "Распознавайте записи, следите за заданиями и пакетами, пробуйте распознавание в реальном времени.",
  "API key": "Ключ API",
  "Your administrator creates keys with ": "Ключи создаёт администратор командой ",
  ". The key stays in this browser tab only and is sent as a header, never in a link.":
    ". Ключ хранится только в этой вкладке и передаётся в заголовке, никогда в ссылке.",
  "Checking…": "Проверка…",
  // statuses and common words
  Queued: "В очереди",
  "Reading the folder": "Читается папка",
  Processing: "Обрабатывается",
  Completed: "Готово",
  Failed: "Ошибка",
  Cancelled: "Отменено",
  All: "Все",
  Progress: "Ход выполнения",
  "Live session": "Живая сессия",
  "Job {id}": "Задание {id}",
  "Code: {code}": "Код: {code}",
  Delete: "Удалить",
  Cancel: "Отмена",
  Mono: "Моно",
  mono: "моно",
  "stereo, split": "стерео, раздельно",
  "stereo, mixed": "стерео, сведено",
  "Stereo, split (agent left, client right)": "Стерео, каналы раздельно (оператор слева, клиент справа)",
  "Stereo, mixed to mono": "Стерео, сведено в моно",
  "{n} channels": "Каналов: {n}",
  "{n} channels, split": "Каналов: {n}, раздельно",
  "{n} channels, mixed": "Каналов: {n}, сведено",
  "Split asked (the file is not read yet)": "Запрошено раздельно (файл ещё не прочитан)",
  "Mixed (the file is not read yet)": "Запрошено сведение (файл ещё не прочитан)",
  s: "с",
  min: "мин",
  h: "ч",
  B: "Б",
  kB: "кБ",
  MB: "МБ",
  GB: "ГБ",
  "Waveform of the recording, {n} channels, {x} seconds": "Осциллограмма записи, каналов: {n}, {x} с",
  "Waveform of the recording, {n} channel, {x} seconds": "Осциллограмма записи, каналов: {n}, {x} с",
  "← Newer": "← Новее",
  "Older →": "Старше →",
  Pages: "Страницы",
  "Page {n}": "Страница {n}",
  Status: "Статус",
  Created: "Создано",
  Duration: "Длительность",
  Channels: "Каналы",
  Recording: "Запись",
  Actions: "Действия",
  Finished: "Завершено",
  Source: "Источник",
  Metadata: "Метаданные",
  // jobs
  "Filter jobs": "Фильтр заданий",
  "Created from": "Создано с",
  to: "по",
  "Per page": "На странице",
  "Clear filters": "Сбросить фильтры",
  "Loading jobs…": "Загрузка заданий…",
  "Upload recordings": "Загрузить записи",
  "Metadata columns": "Столбцы метаданных",
  "Delete “{name}”? Its recording and transcript are removed for good.":
    "Удалить «{name}»? Запись и расшифровка будут удалены безвозвратно.",
  "Deleted {name}.": "Удалено: {name}.",
  "Deleted “{name}”.": "Удалено: «{name}».",
  "live session": "живая сессия",
  "from URL": "по ссылке",
  "Progress of {name}": "Ход выполнения: {name}",
  "Delete {name}": "Удалить {name}",
  "No jobs match these filters.": "Нет заданий по этим фильтрам.",
  "No jobs yet.": "Заданий пока нет.",
  "Upload a recording": "Загрузите запись",
  " or ": " или ",
  "try live recognition": "попробуйте распознавание в реальном времени",
  "Jobs, newest first": "Задания, новые сверху",
  // transcript
  Agent: "Оператор",
  Client: "Клиент",
  Job: "Задание",
  "← All jobs": "← Все задания",
  "Cancel job": "Отменить задание",
  "Waiting for a worker…": "Ждёт свободного обработчика…",
  "Transcribing…": "Распознаётся…",
  "Transcription progress": "Ход распознавания",
  "This job was cancelled; it has no transcript.": "Задание отменено; расшифровки нет.",
  "Job not found": "Задание не найдено",
  "Loading the recording…": "Загрузка записи…",
  "Search the transcript": "Поиск по расшифровке",
  "Previous match": "Предыдущее совпадение",
  "Next match": "Следующее совпадение",
  " Follow playback": " Следить за воспроизведением",
  " Spoken words": " Как произнесено",
  "Download the transcript": "Скачать расшифровку",
  Download: "Скачать",
  "Download as {label}": "Скачать как {label}",
  "Channel {n}": "Канал {n}",
  "Play from {t}": "Воспроизвести с {t}",
  "Play from {t}, {who}": "Воспроизвести с {t}, {who}",
  "{n} match": "{n} совпадение",
  "{n} matches": (p) => `${p.n} ${plural(Number(p.n), "совпадение", "совпадения", "совпадений")}`,
  "No matches": "Нет совпадений",
  "{n} of {m}": "{n} из {m}",
  Transcript: "Расшифровка",
  "No speech was recognized in this recording.": "В этой записи речь не распознана.",
  "The waveform could not be drawn in this browser; the recording plays above.":
    "Этот браузер не смог нарисовать осциллограмму; запись можно прослушать выше.",
  "This live session kept only its transcript: there is no recording to play.":
    "У этой живой сессии сохранилась только расшифровка: записи для прослушивания нет.",
  // upload
  "Split stereo: agent left, client right": "Стерео раздельно: оператор слева, клиент справа",
  "Mix to one channel": "Свести в один канал",
  Automatic: "Автоматически",
  "Greedy (fastest)": "Жадный (быстрее всего)",
  "Beam search": "Лучевой поиск",
  "Drop recordings here": "Перетащите записи сюда",
  "WAV, FLAC, MP3, Ogg/Opus, M4A, AMR, WMA… several at once.": "WAV, FLAC, MP3, Ogg/Opus, M4A, AMR, WMA… можно несколько сразу.",
  "Choose files…": "Выбрать файлы…",
  "Transcribe from a URL": "Распознать по ссылке",
  "Or transcribe a recording from a URL": "Или распознайте запись по ссылке",
  "Transcribe URL": "Распознать",
  "The server downloads it; the URL must be reachable from the server.":
    "Запись скачивает сервер: ссылка должна быть доступна с сервера.",
  Decoder: "Декодер",
  "This session's uploads": "Загрузки этого сеанса",
  "Nothing uploaded yet in this session.": "В этом сеансе ещё ничего не загружено.",
  "Give an http:// or https:// address.": "Укажите адрес http:// или https://.",
  "The job is gone (deleted?).": "Задания больше нет (удалено?).",
  Uploading: "Загружается",
  "Upload of {name}": "Загрузка {name}",
  "Open transcript": "Открыть расшифровку",
  Details: "Подробнее",
  // the written-form options (upload, batches, live)
  " Numbers as digits": " Числа цифрами",
  "Vocabulary (comma-separated)": "Словарь (через запятую)",
  Mask: "Что скрывать",
  cards: "номера карт",
  phones: "телефоны",
  passports: "паспортные данные",
  INN: "ИНН",
  SNILS: "СНИЛС",
  "e-mail": "эл. почта",
  profanity: "ненормативная лексика",
  // live
  Start: "Начать",
  Stop: "Остановить",
  "Ready.": "Готово к работе.",
  "Microphone level": "Уровень микрофона",
  "Recognized phrases": "Распознанные фразы",
  "Speak into your microphone: phrases appear as they are recognized. The audio goes to this server only, at 8 kHz.":
    "Говорите в микрофон: фразы появляются по мере распознавания. Звук уходит только на этот сервер, 8 кГц.",
  " Keep the session as a job when I stop": " Сохранить сессию как задание после остановки",
  Level: "Уровень",
  "Stopped.": "Остановлено.",
  "Asking for the microphone…": "Запрашиваем доступ к микрофону…",
  "Connecting…": "Подключение…",
  "Listening… speak now.": "Слушаю… говорите.",
  "Session ended: {n} phrase.": "Сессия окончена: {n} фраза.",
  "Session ended: {n} phrases.": (p) => `Сессия окончена: ${p.n} ${plural(Number(p.n), "фраза", "фразы", "фраз")}.`,
  " It was kept as a job: ": " Она сохранена как задание: ",
  "open the saved job": "открыть сохранённое задание",
  "Finishing…": "Завершение…",
  "Live recognition needs microphone access and AudioWorklet (a current browser, over https or on localhost).":
    "Для распознавания в реальном времени нужны доступ к микрофону и AudioWorklet (современный браузер, https или localhost).",
  "No final answer from the server.": "Сервер не прислал итоговый ответ.",
  // batches
  "Batch {id}": "Пакет {id}",
  "Jobs by status": "Задания по статусам",
  "finished {when}": "завершён {when}",
  "about {t} left": "осталось около {t}",
  finished: "завершён",
  "estimating…": "оценивается…",
  archive: "архив",
  manifest: "манифест",
  directory: "папка",
  " queued": " в очереди",
  " processing": " в работе",
  " completed": " готово",
  " failed": " с ошибкой",
  " cancelled": " отменено",
  "the archive's name": "имя архива",
  "Upload archive": "Загрузить архив",
  "New batch": "Новый пакет",
  "A ZIP or tar(.gz) archive of recordings; an optional metadata.csv at its root (first column: the file's path) is attached to each item.":
    "Архив ZIP или tar(.gz) с записями; необязательный metadata.csv в корне (первый столбец — путь к файлу) прикрепляется к каждой записи.",
  Archive: "Архив",
  "Name (optional)": "Название (необязательно)",
  "Loading batches…": "Загрузка пакетов…",
  "Choose an archive first.": "Сначала выберите архив.",
  "Upload progress": "Ход загрузки",
  "Uploading {name}… ": "Загружается {name}… ",
  " skipped": " пропущено",
  "Open it": "Открыть",
  "No batches yet: upload an archive above.": "Пакетов пока нет: загрузите архив выше.",
  "Batches, newest first": "Пакеты, новые сверху",
  Batch: "Пакет",
  "Time left": "Осталось",
  "Load more items": "Показать ещё",
  "Download the results": "Скачать результаты",
  Results: "Результаты",
  "Download results as {label}": "Скачать результаты как {label}",
  "← All batches": "← Все пакеты",
  Items: "Записи",
  " Only failed": " Только с ошибками",
  "Batch progress": "Ход пакета",
  "Audio done": "Обработано аудио",
  "Audio left": "Осталось аудио",
  "Cancel batch": "Отменить пакет",
  "Delete batch": "Удалить пакет",
  "Delete this batch? Its recordings, transcripts and results are removed for good.":
    "Удалить этот пакет? Записи, расшифровки и результаты будут удалены безвозвратно.",
  "The batch was deleted.": "Пакет удалён.",
  "Cancel every queued and running job of this batch?": "Отменить все ожидающие и выполняющиеся задания пакета?",
  "No failed items.": "Записей с ошибками нет.",
  "No items.": "Записей нет.",
  File: "Файл",
  Reason: "Причина",
  "Batch not found": "Пакет не найден",
  "{n} item": "{n} запись",
  "{n} items": (p) => `${p.n} ${plural(Number(p.n), "запись", "записи", "записей")}`,
  "{n} of {m} job finished · {eta}": "Завершено {n} из {m} задания · {eta}",
  "{n} of {m} jobs finished · {eta}": "Завершено {n} из {m} заданий · {eta}",
  "Batch created: {n} item in {m} job": "Пакет создан: {n} запись, заданий: {m}",
  "Batch created: {n} item in {m} jobs": "Пакет создан: {n} запись, заданий: {m}",
  "Batch created: {n} items in {m} job": (p) => `Пакет создан: ${p.n} ${plural(Number(p.n), "запись", "записи", "записей")}, заданий: ${p.m}`,
  "Batch created: {n} items in {m} jobs": (p) => `Пакет создан: ${p.n} ${plural(Number(p.n), "запись", "записи", "записей")}, заданий: ${p.m}`,
  ", {n} skipped": ", пропущено: {n}",
  "{n} file of the archive skipped": "Пропущен {n} файл архива",
  "{n} files of the archive skipped": "Пропущено файлов архива: {n}",
  "Cancelled {n} job.": "Отменено заданий: {n}.",
  "Cancelled {n} jobs.": "Отменено заданий: {n}.",
  // search
  Search: "Поиск",
  "Search the calls": "Поиск по звонкам",
  "Said by": "Кто говорит",
  "Both sides": "Обе стороны",
  "Any status": "Любой статус",
  From: "Дата с",
  Until: "Дата по",
  "Min. length (s)": "Мин. длительность (с)",
  "Max. length (s)": "Макс. длительность (с)",
  " One result per call": " Один результат на звонок",
  "More results": "Ещё результаты",
  "Searching…": "Идёт поиск…",
  "Nothing found.": "Ничего не найдено.",
  "Metadata filters are key=value, separated by commas.": "Фильтры по метаданным пишутся как ключ=значение через запятую.",
  "Open the call at {t}": "Открыть звонок с {t}",
  "Open {name} at {t}": "Открыть {name} с {t}",
  "{n} phrase found": phrasesFound,
  "{n} phrases found": phrasesFound,
  "{n} call found": callsFound,
  "{n} calls found": callsFound,
  "{n}+ phrase found": morePhrasesFound,
  "{n}+ phrases found": morePhrasesFound,
  "{n}+ call found": moreCallsFound,
  "{n}+ calls found": moreCallsFound,
  // conversation analytics (a call's card, a batch's aggregates)
  "Conversation analytics": "Аналитика разговора",
  Conversation: "Разговор",
  "Talk share: agent {a}, client {b}": "Доля речи: оператор {a}, клиент {b}",
  Speech: "Речь",
  Silence: "Тишина",
  "Longest silence": "Самая долгая пауза",
  Overtalk: "Одновременная речь",
  "Silence {a}–{b}": "Тишина {a}–{b}",
  "Overtalk {a}–{b}": "Одновременная речь {a}–{b}",
  "Talk time": "Время речи",
  Interruptions: "Перебивания",
  "Reply latency (median)": "Задержка ответа (медиана)",
  "Speech rate": "Темп речи",
  "Longest monologue": "Самый долгий монолог",
  Measure: "Показатель",
  "words/min": "слов/мин",
  "Speech rate {x} · a mono recording has no per-side measures.": "Темп речи {x} · у монозаписи нет показателей по сторонам.",
  Flags: "Сработавшие правила",
  "phrase contains": "фраза содержит слова",
  "missing in first": "нет слов в начале",
  "silence over": "долгая тишина",
  "overtalk share over": "много одновременной речи",
  "Agent talk share": "Доля речи оператора",
  "Agent talk time": "Время речи оператора",
  "Client talk time": "Время речи клиента",
  "Agent interruptions": "Перебивания оператором",
  "Client interruptions": "Перебивания клиентом",
  "Agent reply latency": "Задержка ответа оператора",
  "Agent speech rate (words/min)": "Темп речи оператора (слов/мин)",
  "No call has been measured yet.": "Пока нет проанализированных звонков.",
  "{n} call measured.": callsMeasured,
  "{n} calls measured.": callsMeasured,
  Mean: "Среднее",
  Median: "Медиана",
  Total: "Всего",
  "Agent share": "Доля оператора",
  "Words/min": "Слов/мин",
  "Per {name} (means)": "Средние по «{name}»",
  Calls: "Звонки",
  "(none)": "(не указано)",
  // errors (api.js describe)
  "Enter your API key.": "Введите ключ API.",
  "This API key was not accepted. Check that it is complete and not revoked, then sign in again.":
    "Этот ключ API не принят. Проверьте, что он введён полностью и не отозван, и войдите снова.",
  "This API key may not do that.": "Этому ключу API это не разрешено.",
  "The file is too large: this server accepts uploads up to {size}.": "Файл слишком большой: сервер принимает файлы до {size}.",
  "The file is too large for this server.": "Файл слишком большой для этого сервера.",
  "The upload was interrupted before the server answered. The file may be larger than the server accepts, or the connection dropped.":
    "Загрузка прервалась до ответа сервера. Возможно, файл больше допустимого или оборвалось соединение.",
  "The upload was cancelled.": "Загрузка отменена.",
  "The request is too large for this server.": "Запрос слишком велик для этого сервера.",
  "The recording is too long for this server.": "Запись слишком длинная для этого сервера.",
  "Unsupported format: this file is not audio the platform can read. Try WAV (PCM, µ-law, A-law, GSM), FLAC, MP3, Ogg Vorbis or Opus, M4A/AAC, AMR or WMA.":
    "Неподдерживаемый формат: платформа не может прочитать этот файл как звук. Подойдут WAV (PCM, µ-law, A-law, GSM), FLAC, MP3, Ogg Vorbis или Opus, M4A/AAC, AMR или WMA.",
  "The server did not accept the request's format.": "Сервер не принял формат запроса.",
  "The file looks like audio but is damaged or truncated, so it cannot be transcribed.":
    "Файл похож на звук, но повреждён или обрезан, поэтому распознать его нельзя.",
  "The file holds no audio.": "В файле нет звука.",
  "The recording could not be downloaded from that URL.": "Не удалось скачать запись по этой ссылке.",
  "That URL points to a private or local address, which the server does not fetch.":
    "Ссылка ведёт на частный или локальный адрес, сервер такие не скачивает.",
  "Too many requests with this key just now. Wait a moment; the console will try again.":
    "Слишком много запросов с этим ключом. Подождите немного: консоль повторит сама.",
  "Not found. It may have been deleted, or it belongs to another account.":
    "Не найдено. Возможно, удалено или принадлежит другой учётной записи.",
  "The recording of this job is not stored, so it cannot be played (a live session keeps only its transcript).":
    "Запись этого задания не сохранена, прослушать её нельзя (живая сессия хранит только расшифровку).",
  "The transcript is not ready yet.": "Расшифровка ещё не готова.",
  "The job has already ended.": "Задание уже завершено.",
  "The request was not accepted.": "Запрос не принят.",
  "That page no longer exists; start from the first page.": "Этой страницы больше нет; начните с первой.",
  "The request was not valid JSON.": "Запрос — не корректный JSON.",
  "A request with the same Idempotency-Key but a different body was already made.":
    "Запрос с тем же Idempotency-Key, но другим содержимым уже был.",
  "Something went wrong on the server. Try again; if it keeps happening, tell your administrator.":
    "На сервере что-то пошло не так. Попробуйте ещё раз; если повторится, сообщите администратору.",
  "The service is not available right now. Try again in a moment.": "Сервис сейчас недоступен. Попробуйте чуть позже.",
  "The server could not be reached. Check your connection and that the platform is running.":
    "Сервер недоступен. Проверьте соединение и что платформа запущена.",
  "The transcription was interrupted several times (its worker stopped) and was given up.":
    "Распознавание несколько раз прерывалось (обработчик останавливался) и было прекращено.",
  "The server has no speech model installed, so it cannot transcribe. Tell your administrator.":
    "На сервере не установлена модель распознавания. Сообщите администратору.",
  "The speech model failed on this recording. Tell your administrator.": "Модель распознавания дала сбой на этой записи. Сообщите администратору.",
  "The job was cancelled.": "Задание отменено.",
  "The transcription took too long and was stopped.": "Распознавание заняло слишком много времени и было остановлено.",
  "The archive holds more files than this server accepts in one batch.": "В архиве больше файлов, чем сервер принимает в одном пакете.",
  "The archive, or a file inside it, is larger than this server accepts.": "Архив или файл в нём больше, чем принимает сервер.",
  "The archive unpacks to far more than its size; it was refused as unsafe.":
    "Архив распаковывается в объём намного больше своего размера; отклонён как небезопасный.",
  "The archive contains a file path that points outside the archive; it was refused as unsafe.":
    "В архиве есть путь, ведущий за его пределы; архив отклонён как небезопасный.",
  "That is not a ZIP or tar archive.": "Это не архив ZIP или tar.",
  "This server does not offer that call (it may be an older version).": "Этот сервер не поддерживает такой вызов (возможно, старая версия).",
  "This browser lacks a feature the console needs.": "В этом браузере нет возможности, нужной консоли.",
  "The browser did not allow access to the microphone. Allow it in the site settings and try again.":
    "Браузер не дал доступ к микрофону. Разрешите его в настройках сайта и попробуйте снова.",
  "No microphone was found.": "Микрофон не найден.",
  "The live session was closed because no audio arrived for a while.": "Живая сессия закрыта: долго не было звука.",
  "The live session expired.": "Срок живой сессии истёк.",
  "The live session's settings were not accepted.": "Настройки живой сессии не приняты.",
  "The server did not understand a message of the live session.": "Сервер не понял сообщение живой сессии.",
  "The connection to the server was lost during the live session.": "Во время живой сессии потеряно соединение с сервером.",
  "The request failed.": "Запрос не выполнен.",
  "Type a word to search for (words like «и», «на» alone are not searched).":
    "Введите слово для поиска (такие слова, как «и» или «на», сами по себе не ищутся).",
  "Add a word to find: a search of only -excluded words finds nothing.":
    "Добавьте слово для поиска: запрос только из исключённых слов (с минусом) ничего не найдёт.",
  "The search is too long.": "Слишком длинный поисковый запрос.",
  // the details the console itself gives (describe() shows them capitalised, with a full stop)
  "The server could not be reached.": "Сервер недоступен.",
  "The upload was interrupted.": "Загрузка прервалась.",
  // the language switch
  English: "English",
  "Русский": "Русский",
};

// entries with {placeholders}, as regular expressions over the whole text
const PATTERNS = Object.entries(RU)
  .filter(([key]) => key.includes("{"))
  .map(([key, value]) => {
    const names = [];
    const source = key
      .split(/(\{[a-z]+\})/)
      .map((part) => {
        const name = /^\{([a-z]+)\}$/.exec(part);
        if (!name) return part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
        names.push(name[1]);
        return name[1] === "n" || name[1] === "m" ? "(\\d+)" : "(.+?)";
      })
      .join("");
    return { re: new RegExp(`^${source}$`, "s"), names, value };
  });

function fill(value, params) {
  if (typeof value === "function") return value(params);
  return value.replace(/\{([a-z]+)\}/g, (_, name) => (params[name] !== undefined ? String(params[name]) : `{${name}}`));
}

/** The text in the chosen language: `english` itself in English or where the catalog has no entry. */
export function t(english, params = {}) {
  if (typeof english !== "string" || lang() !== "ru") return english;
  if (Object.prototype.hasOwnProperty.call(RU, english) && !english.includes("{")) return fill(RU[english], params);
  for (const { re, names, value } of PATTERNS) {
    const match = re.exec(english);
    if (match) return fill(value, Object.fromEntries(names.map((n, i) => [n, match[i + 1]])));
  }
  return english;
}

/** A number in the language's locale ("17,7" in Russian). */
export function num(value, digits = 0) {
  return new Intl.NumberFormat(locale(), { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(value);
}
