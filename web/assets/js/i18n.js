// Interface text in English and Korean. Elements made with `tr()` (or
// carrying data-i18n / data-i18n-attr) are re-translated in place when the
// language changes, so switching never reloads or loses the chat.

const en = {
  skip: 'Skip to content', language: 'Language', app_name: 'emosation',
  tagline: 'Chat that shows how it feels.',
  login: 'Log in', signup: 'Sign up', logout: 'Log out', username: 'Username', password: 'Password',
  confirm_password: 'Confirm password', no_account: 'New here?', have_account: 'Already have an account?',
  username_hint: '3–32 characters: lowercase letters, digits, _',
  password_hint: '8–128 characters',
  err_username: 'Use 3–32 lowercase letters, digits or _.',
  err_password: 'Use 8 to 128 characters.',
  err_confirm: 'The passwords do not match.',
  err_taken: 'That username is taken.',
  err_credentials: 'Wrong username or password.',
  err_network: 'Cannot reach the server. Try again.',
  err_rate: 'Too many attempts. Wait a moment.',
  err_generic: 'Something went wrong: {message}',
  my_rooms: 'My rooms', find_rooms: 'Find rooms', no_rooms: 'You are not in any room yet.',
  directory: 'Room directory', filter: 'Filter by name', create_room: 'Create a room', room_name: 'Room name',
  capacity: 'Capacity', create: 'Create', join: 'Join', open: 'Open', room_full: 'Room full',
  load_more: 'Load more', members_n: '{n} members', members_of: '{n} / {cap} members', no_match: 'No room matches.',
  members: 'Members', mood: 'Room mood', activity: 'Activity, last 24 hours', no_activity: 'No messages in the last 24 hours.',
  messages_per_hour: '{n} messages at {hour}',
  send: 'Send', message_placeholder: 'Write a message…', message_label: 'Message',
  typing_one: '{a} is typing…', typing_two: '{a} and {b} are typing…', typing_many: 'Several people are typing…',
  pending: 'Sending…', delivered: 'Delivered', failed: 'Not sent', retry: 'Retry',
  start_of_room: 'This is the start of the room.', loading: 'Loading…', load_older: 'Load older messages',
  joined: '{user} joined', left: '{user} left', leave_room: 'Leave', not_member: 'You are not a member of this room.',
  show_emotions: 'Show emotions', details: 'Room details', rooms: 'Rooms', new_messages: 'New messages',
  unread_n: '{n} unread',
  online_n: '{n} here now', entered: '{user} is here', went_away: '{user} stepped away', online: 'here now',
  st_connecting: 'Connecting…', st_live: 'Live', st_reconnecting: 'Connection lost. Reconnecting in {s} s…',
  st_resuming: 'Reconnecting…', st_resumed: 'Reconnected: caught up, nothing missed.', st_offline: 'Offline',
  st_no_network: 'No network. Reconnecting as soon as it is back…',
  kicked: 'You signed in somewhere else, so this tab was disconnected.', use_here: 'Use here',
  ended_logout: 'Your session ended: you logged out elsewhere.',
  ended_account_deleted: 'Your session ended: the account was deleted.',
  ended_revoked: 'Your session ended for safety. Please log in again.',
  ended_token_expired: 'Your session expired. Please log in again.',
  account: 'Account', signed_in_as: 'Signed in as {user}', member_since: 'Member since {date}',
  delete_account: 'Delete account', delete_confirm: 'Delete your account? You will not be able to log in.',
  delete_yes: 'Yes, delete it', cancel: 'Cancel', back: 'Back',
  joy: 'joy', sadness: 'sadness', anger: 'anger', fear: 'fear', surprise: 'surprise', disgust: 'disgust', neutral: 'neutral',
  emotion_of: 'Emotion: {label}, {pct}% confident', mood_empty: 'No emotions yet.',
  edit: 'Edit', delete: 'Delete', save: 'Save', edited: 'edited', deleted_msg: 'This message was deleted.',
  edit_label: 'Edit your message', delete_confirm_msg: 'Delete this message for everyone?',
  msg_actions: 'Message actions', err_not_author: 'Only its author can change this message.',
  attach: 'Attach files', drop_files: 'Drop files to attach them', uploading: 'Uploading… {pct}%',
  upload_ready: 'Ready to send', upload_failed: 'Not uploaded: {message}', too_large: 'Too large for this server',
  remove_file: 'Remove {name}', wait_uploads: 'Wait until the files are uploaded.', attachments_label: 'Files to send',
  download_file: 'Download {name} ({size})', file_gone: 'This file is no longer available.',
  friends: 'Friends', add_friend: 'Add a friend', friend_placeholder: 'Their username',
  requests_in: 'Friend requests', requests_out: 'Sent requests', blocked_users: 'Blocked',
  none_incoming: 'No requests.', none_friends: 'No friends yet.', none_outgoing: 'No pending requests.', none_blocked: 'Nobody.',
  accept: 'Accept', decline: 'Decline', cancel_request: 'Cancel request', message_friend: 'Message',
  remove_friend: 'Remove', block: 'Block', unblock: 'Unblock', online_now: 'online', offline_now: 'offline',
  request_sent: 'Request sent to {user}.', now_friends: 'You and {user} are friends now.',
  err_user_not_found: 'No such user.', err_blocked: 'One of you blocks the other.',
  err_friend_self: 'You cannot add yourself.', err_not_friends: 'You are not friends.',
  admin_console: 'Admin console', users: 'Users', search_users: 'Search by username', not_admin: 'Only admins can see this page.',
  st_active: 'active', st_deleted: 'deleted', is_admin: 'admin', make_admin: 'Make admin', remove_admin: 'Remove admin',
  delete_user: 'Delete', restore_user: 'Restore', no_users: 'No user matches.',
  stats: 'Overview', total_users: 'Accounts', total_rooms: 'Rooms', total_messages: 'Messages', online_users: 'Online now',
  signups_per_day: 'Sign-ups per day', messages_per_day: 'Messages per day', emotion_mix: 'Emotion mix (7 days)',
  n_on_day: '{n} on {day}', audit: 'Audit', no_audit: 'No admin actions yet.',
  a_admin_granted: '{by} made {user} an admin', a_admin_revoked: '{by} removed {user} from admins',
  a_account_deleted: '{by} deleted {user}', a_account_restored: '{by} restored {user}',
  by_token: 'the admin token', by_cli: 'the command line', by_unknown: 'an admin',
};

const ko = {
  skip: '본문으로 건너뛰기', language: '언어', app_name: 'emosation',
  tagline: '마음이 보이는 채팅.',
  login: '로그인', signup: '회원가입', logout: '로그아웃', username: '아이디', password: '비밀번호',
  confirm_password: '비밀번호 확인', no_account: '처음이신가요?', have_account: '이미 계정이 있으신가요?',
  username_hint: '3–32자: 영문 소문자, 숫자, _',
  password_hint: '8–128자',
  err_username: '영문 소문자, 숫자, _ 로 3–32자를 입력하세요.',
  err_password: '8자 이상 128자 이하로 입력하세요.',
  err_confirm: '비밀번호가 일치하지 않습니다.',
  err_taken: '이미 사용 중인 아이디입니다.',
  err_credentials: '아이디 또는 비밀번호가 올바르지 않습니다.',
  err_network: '서버에 연결할 수 없습니다. 다시 시도하세요.',
  err_rate: '시도가 너무 많습니다. 잠시 기다려 주세요.',
  err_generic: '문제가 발생했습니다: {message}',
  my_rooms: '내 채팅방', find_rooms: '채팅방 찾기', no_rooms: '아직 참여한 채팅방이 없습니다.',
  directory: '채팅방 목록', filter: '이름으로 찾기', create_room: '채팅방 만들기', room_name: '채팅방 이름',
  capacity: '정원', create: '만들기', join: '참여', open: '열기', room_full: '정원이 가득 찼습니다',
  load_more: '더 보기', members_n: '{n}명', members_of: '{n} / {cap}명', no_match: '일치하는 채팅방이 없습니다.',
  members: '참여자', mood: '채팅방 분위기', activity: '최근 24시간 활동', no_activity: '최근 24시간 동안 메시지가 없습니다.',
  messages_per_hour: '{hour}: 메시지 {n}개',
  send: '보내기', message_placeholder: '메시지를 입력하세요…', message_label: '메시지',
  typing_one: '{a}님이 입력 중…', typing_two: '{a}님과 {b}님이 입력 중…', typing_many: '여러 명이 입력 중…',
  pending: '보내는 중…', delivered: '전송됨', failed: '전송 실패', retry: '다시 보내기',
  start_of_room: '채팅방의 첫 메시지입니다.', loading: '불러오는 중…', load_older: '이전 메시지 불러오기',
  joined: '{user}님이 들어왔습니다', left: '{user}님이 나갔습니다', leave_room: '나가기', not_member: '이 채팅방의 참여자가 아닙니다.',
  show_emotions: '감정 표시', details: '채팅방 정보', rooms: '채팅방', new_messages: '새 메시지',
  unread_n: '안 읽음 {n}',
  online_n: '{n}명 접속 중', entered: '{user}님이 접속했습니다', went_away: '{user}님이 자리를 떠났습니다', online: '접속 중',
  st_connecting: '연결 중…', st_live: '실시간', st_reconnecting: '연결이 끊겼습니다. {s}초 후 다시 연결합니다…',
  st_resuming: '다시 연결 중…', st_resumed: '다시 연결됨: 놓친 메시지 없이 이어졌습니다.', st_offline: '오프라인',
  st_no_network: '네트워크가 없습니다. 돌아오면 바로 다시 연결합니다…',
  kicked: '다른 곳에서 로그인하여 이 탭의 연결이 끊겼습니다.', use_here: '여기서 사용',
  ended_logout: '다른 곳에서 로그아웃하여 세션이 끝났습니다.',
  ended_account_deleted: '계정이 삭제되어 세션이 끝났습니다.',
  ended_revoked: '보안을 위해 세션이 끝났습니다. 다시 로그인하세요.',
  ended_token_expired: '세션이 만료되었습니다. 다시 로그인하세요.',
  account: '계정', signed_in_as: '{user}님으로 로그인됨', member_since: '가입일 {date}',
  delete_account: '계정 삭제', delete_confirm: '계정을 삭제할까요? 다시 로그인할 수 없습니다.',
  delete_yes: '삭제합니다', cancel: '취소', back: '뒤로',
  joy: '기쁨', sadness: '슬픔', anger: '분노', fear: '두려움', surprise: '놀람', disgust: '혐오', neutral: '중립',
  emotion_of: '감정: {label}, 확신도 {pct}%', mood_empty: '아직 감정이 없습니다.',
  edit: '수정', delete: '삭제', save: '저장', edited: '수정됨', deleted_msg: '삭제된 메시지입니다.',
  attach: '파일 첨부', drop_files: '여기에 놓으면 첨부됩니다', uploading: '올리는 중… {pct}%',
  upload_ready: '보낼 준비 완료', upload_failed: '올리지 못했습니다: {message}', too_large: '이 서버에 올리기에는 너무 큽니다',
  remove_file: '{name} 빼기', wait_uploads: '파일을 다 올릴 때까지 기다려 주세요.', attachments_label: '보낼 파일',
  download_file: '{name} 내려받기 ({size})', file_gone: '더 이상 받을 수 없는 파일입니다.',
  edit_label: '메시지 수정', delete_confirm_msg: '모든 사람에게서 이 메시지를 삭제할까요?',
  msg_actions: '메시지 메뉴', err_not_author: '작성자만 이 메시지를 바꿀 수 있습니다.',
  friends: '친구', add_friend: '친구 추가', friend_placeholder: '상대의 아이디',
  requests_in: '받은 친구 요청', requests_out: '보낸 요청', blocked_users: '차단한 사용자',
  none_incoming: '요청이 없습니다.', none_friends: '아직 친구가 없습니다.', none_outgoing: '대기 중인 요청이 없습니다.', none_blocked: '없음.',
  accept: '수락', decline: '거절', cancel_request: '요청 취소', message_friend: '메시지',
  remove_friend: '친구 삭제', block: '차단', unblock: '차단 해제', online_now: '접속 중', offline_now: '오프라인',
  request_sent: '{user}님에게 요청을 보냈습니다.', now_friends: '{user}님과 친구가 되었습니다.',
  err_user_not_found: '그런 사용자가 없습니다.', err_blocked: '한쪽이 상대를 차단했습니다.',
  err_friend_self: '자기 자신은 추가할 수 없습니다.', err_not_friends: '친구가 아닙니다.',
  admin_console: '관리자 콘솔', users: '사용자', search_users: '아이디로 찾기', not_admin: '관리자만 볼 수 있는 페이지입니다.',
  st_active: '활성', st_deleted: '삭제됨', is_admin: '관리자', make_admin: '관리자로 지정', remove_admin: '관리자 해제',
  delete_user: '삭제', restore_user: '복구', no_users: '일치하는 사용자가 없습니다.',
  stats: '현황', total_users: '계정', total_rooms: '방', total_messages: '메시지', online_users: '지금 접속 중',
  signups_per_day: '일별 가입', messages_per_day: '일별 메시지', emotion_mix: '감정 분포 (7일)',
  n_on_day: '{day}: {n}', audit: '감사 기록', no_audit: '아직 관리자 작업이 없습니다.',
  a_admin_granted: '{by}님이 {user}님을 관리자로 지정', a_admin_revoked: '{by}님이 {user}님의 관리자 권한을 해제',
  a_account_deleted: '{by}님이 {user}님을 삭제', a_account_restored: '{by}님이 {user}님을 복구',
  by_token: '관리자 토큰', by_cli: '명령줄', by_unknown: '관리자',
};

const DICTS = { en, ko };
const KEY = 'emosation.lang';

function initial() {
  const saved = localStorage.getItem(KEY);
  if (saved && DICTS[saved]) return saved;
  for (const l of navigator.languages || [navigator.language || 'en']) {
    const base = String(l).toLowerCase().split('-')[0];
    if (DICTS[base]) return base;
  }
  return 'en';
}

export let lang = initial();

export function t(key, vars) {
  const s = DICTS[lang][key] ?? en[key] ?? key;
  return vars ? s.replace(/\{(\w+)\}/g, (_, k) => (k in vars ? vars[k] : `{${k}}`)) : s;
}

/** A text span that follows the language. */
export function tr(key, vars, tag = 'span') {
  const el = document.createElement(tag);
  setTr(el, key, vars);
  return el;
}

export function setTr(el, key, vars) {
  el.dataset.i18n = key;
  if (vars) el.dataset.i18nVars = JSON.stringify(vars);
  else delete el.dataset.i18nVars;
  el.textContent = t(key, vars);
  return el;
}

/** attrs: {placeholder: 'key', 'aria-label': 'key'} */
export function trAttrs(el, attrs) {
  el.dataset.i18nAttr = Object.entries(attrs).map(([a, k]) => `${a}=${k}`).join(';');
  translate(el);
  return el;
}

function translate(el) {
  if (el.dataset.i18n) {
    el.textContent = t(el.dataset.i18n, el.dataset.i18nVars ? JSON.parse(el.dataset.i18nVars) : undefined);
  }
  if (el.dataset.i18nAttr) {
    for (const pair of el.dataset.i18nAttr.split(';')) {
      const [a, k] = pair.split('=');
      el.setAttribute(a, t(k));
    }
  }
}

const listeners = new Set();
/** Calls f(lang) on every switch; returns the function that stops it. */
export function onLangChange(f) {
  listeners.add(f);
  return () => listeners.delete(f);
}

export function setLang(l) {
  if (!DICTS[l]) return;
  lang = l;
  localStorage.setItem(KEY, l);
  document.documentElement.lang = l;
  document.querySelectorAll('[data-i18n],[data-i18n-attr]').forEach(translate);
  listeners.forEach((f) => f(l));
}

export function fmtTime(iso) {
  return new Date(iso).toLocaleTimeString(lang === 'ko' ? 'ko-KR' : 'en-GB', { hour: '2-digit', minute: '2-digit' });
}

export function fmtDate(iso) {
  return new Date(iso).toLocaleDateString(lang === 'ko' ? 'ko-KR' : 'en-GB', { year: 'numeric', month: 'short', day: 'numeric' });
}
